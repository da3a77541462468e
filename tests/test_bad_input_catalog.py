"""The bad-input catalogue (docs/bad_input.md): each kind of bad input gets a clear error naming the file
or field and the fix, and nothing already written is lost or half-written. Single process: the
training-job checks are the ones every rank runs in ``ast_ds.preflight`` (agreed across ranks) and
the ``CheckpointManager``'s; the launchers turn these errors into a non-zero exit."""

import errno
import json
import os
import shutil

import pytest
import torch

from ast_ds.checkpoint import CheckpointError
from ast_ds.config import TrainConfig
from ast_ds.data.corpus import Corpus
from ast_ds.preflight import check_inputs
from test_data_helpers import SEQ_LEN, prepared, scratch, tokenizer_model


def tiny_llama(path, *, tokenizer, vocab=320, positions=512, model_type_hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ast_ds.data.tokenizer import load_tokenizer

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=model_type_hidden, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    if tokenizer:
        load_tokenizer(tokenizer).save_to(str(path))
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("m") / "model", tokenizer=tokenizer_model())


def cfg_for(model_path, data_dir, **kw) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.path, cfg.data.data_dir = model_path, data_dir
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_good_inputs_pass(model):
    check_inputs(cfg_for(model, prepared()), Corpus(prepared()))


def test_a_folder_that_is_not_a_prepared_corpus(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.data_dir .*no manifest.*Run data_prep/prepare.py"):
        check_inputs(cfg_for(model, str(tmp_path)), Corpus(str(tmp_path)))


def test_a_corpus_prepared_with_another_tokenizer(tmp_path):
    from ast_ds.demo import make_corpus, train_tokenizer

    make_corpus(str(tmp_path / "raw"), docs_per_domain=60)
    other = train_tokenizer(str(tmp_path / "raw"), str(tmp_path / "other"), vocab_size=320)
    model = tiny_llama(tmp_path / "model", tokenizer=other)
    with pytest.raises(ValueError, match="prepared with another tokenizer.*re-run data_prep/prepare.py --tokenizer"):
        check_inputs(cfg_for(model, prepared()), Corpus(prepared()))


def test_rows_longer_than_the_models_positions(tmp_path):
    model = tiny_llama(tmp_path / "model", tokenizer=tokenizer_model(), positions=SEQ_LEN // 2)
    with pytest.raises(ValueError, match=f"rows of {SEQ_LEN} tokens exceed .*max_position_embeddings"):
        check_inputs(cfg_for(model, prepared()), Corpus(prepared()))


def test_an_nm_pattern_whose_m_does_not_divide_a_target(tmp_path):
    from ast_ds.sparse_training import SparseTraining

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(6, 8)

    cfg = TrainConfig()
    cfg.sparsity.pattern, cfg.sparsity.targets = "2:4", ["q_proj"]
    with pytest.raises(ValueError, match="M=4 does not divide the input dimension 6 of q_proj.weight"):
        SparseTraining(cfg.sparsity, total_steps=10).prepare_model(Block())


def test_a_teacher_of_another_architecture_or_vocabulary(model, tmp_path):
    teacher = tiny_llama(tmp_path / "teacher", tokenizer=None, vocab=400)
    cfg = cfg_for(model, prepared())
    cfg.model.teacher_path = teacher
    with pytest.raises(ValueError, match="model.teacher_path .*vocab_size 400 differs"):
        check_inputs(cfg, Corpus(prepared()))
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(dict(config, model_type="gpt2", vocab_size=320)))
    with pytest.raises(ValueError, match="model_type 'gpt2' differs"):
        check_inputs(cfg, Corpus(prepared()))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_truncated_or_corrupted_safetensors(model, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 64)
    with pytest.raises(ValueError, match=r"model.path: .*model.safetensors (is truncated|is not a readable)"):
        check_inputs(cfg_for(str(broken), prepared()), Corpus(prepared()))


@pytest.mark.parametrize("key,saved", [("pattern", "4:8"), ("method", "cast"), ("model", "model_type=gpt2")])
def test_a_resume_from_a_checkpoint_of_another_pattern_method_or_model(tmp_path, key, saved):
    from ast_ds.checkpoint.layout import COMPLETE, tag_name
    from ast_ds.checkpoint.manager import CheckpointManager

    meta = {"mode": "ast", "pattern": "2:4", "method": "ast", "model": "model_type=llama"}
    tag = tmp_path / "checkpoints" / tag_name(5)
    tag.mkdir(parents=True)
    (tag / COMPLETE).write_text(json.dumps(dict(meta, **{key: saved}, step=5, world_size=1)))
    manager = CheckpointManager(str(tmp_path), engine=None, shared={}, per_rank={}, meta=meta, keep_last=1)
    with pytest.raises(CheckpointError, match=f"saved {key}='{saved}'.*resume with the same settings"):
        manager.load(str(tag))


def test_a_rank_file_of_an_older_version(tmp_path):
    from ast_ds.checkpoint.layout import rank_file
    from ast_ds.checkpoint.manager import CheckpointManager

    torch.save({"loader": {}, "rng": torch.get_rng_state(), "sparsity": None}, rank_file(str(tmp_path), 0))
    manager = CheckpointManager(str(tmp_path), engine=None, shared={}, per_rank={"loader": None}, meta={},
                                keep_last=1)
    state, error = manager._read_rank_state(str(tmp_path), 0)
    assert state is None and "format 1" in error and "older" in error


def _hf_folder(out, value: float):
    from ast_ds.checkpoint.export import write_hf_folder

    cfg = os.path.join(scratch("cfg"), "c")
    os.makedirs(cfg, exist_ok=True)
    with open(os.path.join(cfg, "config.json"), "w") as f:
        json.dump({"model_type": "llama"}, f)
    return write_hf_folder(out, tensors={"w": torch.full((4, 4), value)}, config_dir=cfg, dtype="fp32",
                           report={"all_ok": True}, overwrite=True)


def test_consolidation_into_an_existing_folder_is_refused_without_overwrite(tmp_path):
    from ast_ds.checkpoint.export import write_hf_folder

    out = str(tmp_path / "hf")
    _hf_folder(out, 1.0)
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="already exists; remove it or pass --overwrite"):
        write_hf_folder(out, tensors={"w": torch.zeros(4, 4)}, config_dir=out, dtype="fp32", report={})
    assert sorted(os.listdir(out)) == before


def test_a_full_disk_during_consolidation_keeps_the_previous_export(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors.torch import load_file

    out = str(tmp_path / "hf")
    _hf_folder(out, 1.0)

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", enospc)
    with pytest.raises(OSError, match="No space left"):
        _hf_folder(out, 2.0)
    monkeypatch.undo()
    assert torch.equal(load_file(os.path.join(out, "model.safetensors"))["w"], torch.full((4, 4), 1.0))
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary folder left


def test_a_full_disk_during_data_prep_keeps_the_previous_corpus(monkeypatch):
    import ast_ds.data.prepare as prepare_module
    from ast_ds.data.prepare import prepare
    from test_data_helpers import corpus

    inputs, _ = corpus()
    folder = scratch("enospc")
    out = os.path.join(folder, "data")
    prepare(inputs, tokenizer=tokenizer_model(), out=out, seq_len=SEQ_LEN, eval_docs=6, progress=False)
    before = open(os.path.join(out, "manifest.json")).read()

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_module.RowPacker, "add", enospc)
    with pytest.raises(OSError, match="No space left"):
        prepare(inputs, tokenizer=tokenizer_model(), out=out, seq_len=SEQ_LEN // 2, eval_docs=6, progress=False,
                overwrite=True)
    assert open(os.path.join(out, "manifest.json")).read() == before
    assert sorted(os.listdir(folder)) == ["data"]


def test_an_unreachable_remote(model, tmp_path):
    corpus = Corpus(str(tmp_path / "cache"), remote=str(tmp_path / "no" / "such" / "remote"))
    with pytest.raises((OSError, ValueError), match="data.remote .*cannot read the corpus manifest"):
        check_inputs(cfg_for(model, str(tmp_path / "cache")), corpus)


def test_an_empty_domain_in_data_prep(tmp_path):
    from ast_ds.data.prepare import prepare
    from ast_ds.data.sources import DataPrepError

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataPrepError, match="the domain is empty"):
        prepare({"d": str(tmp_path / "empty.jsonl")}, tokenizer=tokenizer_model(), out=str(tmp_path / "out"),
                seq_len=16, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_config_file_with_an_unknown_field(tmp_path):
    from ast_ds.config import apply_overrides, load_file

    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  warmup: 10\n")
    with pytest.raises(ValueError, match=r"run.yaml\[optim\]: unknown config field 'warmup' \(fields here: .*warmup_steps"):
        apply_overrides(TrainConfig(), load_file(str(path)), source=str(path))


@pytest.mark.parametrize("field,value", [("micro_batch", 0), ("micro_batch", -2), ("global_batch", 0),
                                         ("global_batch", -8)])
def test_a_negative_or_zero_batch(model, field, value):
    cfg = cfg_for(model, prepared(), **{field: value})
    with pytest.raises(ValueError, match=f"config field {field}: must be > 0"):
        cfg.validate(1)


def test_evaluation_text_shorter_than_one_window(model, tmp_path):
    from ast_ds.evaluate import perplexity

    text = tmp_path / "short.txt"
    text.write_text("just a few words")
    with pytest.raises(ValueError, match="fewer than one window of --seq_len 256"):
        perplexity(model, str(text), seq_len=256)


def test_resume_on_another_world_size_needs_zero3():
    from types import SimpleNamespace

    from ast_ds.checkpoint.layout import CheckpointError
    from ast_ds.zero.repartition import check_engine

    with pytest.raises(CheckpointError, match="needs ZeRO stage 3.*or resume with the number of ranks"):
        check_engine(SimpleNamespace(optimizer=object()))  # a ZeRO-2 engine's optimizer has no flat fp32 partitions
    swapping = SimpleNamespace(optimizer=SimpleNamespace(fp32_partitioned_groups_flat=[], swap_optimizer=True))
    with pytest.raises(CheckpointError, match="NVMe"):
        check_engine(swapping)

import json
import os

import pytest
import torch

from ast_ds.checkpoint import CheckpointError
from ast_ds.checkpoint.consolidate import stitch_masks
from ast_ds.checkpoint.export import apply_mask, sparsity_report, write_hf_folder
from ast_ds.sparsity import magnitude_nm_mask, pack_bits


def test_apply_mask_writes_positive_zero():
    w = torch.tensor([[-1.0, -2.0, 3.0, -0.5]])
    out = apply_mask(w, magnitude_nm_mask(w))
    assert out.tolist() == [[0.0, -2.0, 3.0, 0.0]]
    assert not torch.signbit(out[out == 0]).any()


def test_stitch_masks_from_rank_slices_and_detects_gaps():
    full = torch.rand(24) > 0.5
    # two ranks, layout (name, global_start, length) per sub-group, slices of 13 and 11 elements
    ranks = [{"layout": [[("w", 0, 13)]], "packed": [pack_bits(full[:13])]},
             {"layout": [[("w", 13, 11)]], "packed": [pack_bits(full[13:])]}]
    assert torch.equal(stitch_masks(ranks, {"w": 24})["w"], full)
    with pytest.raises(CheckpointError, match="inconsistently"):
        stitch_masks(ranks[:1], {"w": 24})


def test_report_and_folder_roundtrip(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    sd = {"layers.0.q_proj.weight": apply_mask(w, magnitude_nm_mask(w)), "norm.weight": torch.ones(16)}
    report = sparsity_report(sd, ["layers.0.q_proj.weight"], n=2, m=4)
    assert report["all_ok"] and report["target_sparsity"] == pytest.approx(0.5)
    bad = dict(sd, **{"layers.0.q_proj.weight": w})
    assert not sparsity_report(bad, ["layers.0.q_proj.weight"], n=2, m=4)["all_ok"]
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = tmp_path / "out"
    write_hf_folder(str(out), tensors=sd, config_dir=str(cfg_dir), dtype="bf16", report=report)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    from safetensors.torch import load_file

    back = load_file(str(out / "model.safetensors"))
    assert back["layers.0.q_proj.weight"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="already exists"):
        write_hf_folder(str(out), tensors=sd, config_dir=str(cfg_dir), dtype="bf16", report=report)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_hf_meta_takes_the_tokenizer_from_the_corpus_copy_not_the_preparing_path(tmp_path):
    import shutil

    from ast_ds.checkpoint.export import write_hf_meta
    from ast_ds.checkpoint.layout import hf_meta_dir
    from ast_ds.data.corpus import Corpus
    from test_data_helpers import prepared

    moved = tmp_path / "corpus"  # the corpus on another machine: the preparing machine's tokenizer path is gone
    shutil.copytree(prepared(), moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["tokenizer"]["path"] = "/nonexistent/preparing/machine/tokenizer.model"
    (moved / "manifest.json").write_text(json.dumps(manifest))
    model = tmp_path / "model"  # a model folder without tokenizer files
    model.mkdir()

    class Config:
        def save_pretrained(self, d):
            (tmp_path / "run" / "hf_meta" / "config.json").write_text("{}")

    meta = write_hf_meta(str(tmp_path / "run"), Config(), model_path=str(model), corpus=Corpus(str(moved)))
    assert meta == hf_meta_dir(str(tmp_path / "run"))
    copied = (tmp_path / "run" / "hf_meta" / "tokenizer.model").read_bytes()
    assert copied == (moved / "tokenizer" / "tokenizer.model").read_bytes()
    assert Corpus(str(moved)).tokenizer().encode("hello") == Corpus(prepared()).tokenizer().encode("hello")


def test_lazy_load_reads_large_tensors_by_range(tmp_path, monkeypatch):
    import ast_ds.checkpoint.zero3_files as z

    monkeypatch.setattr(z, "LAZY_MIN_BYTES", 1000)
    big, small = torch.randn(5000), torch.randn(10)
    path = str(tmp_path / "state.pt")
    torch.save({"flat": [big, big[1000:]], "state": {0: {"step": 3, "exp_avg": small, "t": torch.tensor(2.0)}}}, path)
    obj = z.lazy_load(path)
    lazy, view = obj["flat"]
    assert isinstance(lazy, z.LazyTensor) and isinstance(view, z.LazyTensor)  # a view keeps its storage offset
    assert torch.equal(lazy[17:4017], big[17:4017]) and torch.equal(view[0:3000], big[1000:4000])
    assert torch.equal(obj["state"][0]["exp_avg"], small) and obj["state"][0]["step"] == 3
    assert z.is_array(lazy) and not z.is_array(obj["state"][0]["t"])
    with open(path, "r+b") as f:
        f.truncate(3000)
    with pytest.raises(z.CheckpointError, match="corrupted"):
        z.lazy_load(path)


def test_shard_sizes_and_names_follow_save_pretrained(tmp_path):
    from ast_ds.checkpoint.export import ShardWriter, parse_size, weight_files

    assert parse_size("5GB") == 5 * 10 ** 9 and parse_size("2GiB") == 2 << 30 and parse_size("100") == 100
    with pytest.raises(ValueError, match="5GB"):
        parse_size("lots")
    writer = ShardWriter(str(tmp_path), max_bytes=100)
    for i, n in enumerate([10, 10, 30, 5]):  # 40, 40, 120 (alone), 20 bytes of fp32
        writer.add(f"t{i}", torch.zeros(n))
    names = writer.finish()
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"t0": names[0], "t1": names[0], "t2": names[1], "t3": names[2]}
    assert index["metadata"]["total_size"] == 220 and weight_files(str(tmp_path)) == names

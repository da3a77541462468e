"""GPT-2 (Hugging Face Conv1D layers, weight [in, out]) end to end on a tiny model built from a config: its
c_attn / c_proj / c_fc are trained as nn.Linear under ZeRO-3 (AST with KD, and with SLoRB), consolidated back
into a folder GPT2LMHeadModel loads, every target exactly 2:4 along its input dimension; one-shot magnitude and
SparseGPT, quantization and the serving helper take the same folders. No flag names the targets."""

import os

import pytest
import torch

from ast_ds.sparsity import verify_nm
from conftest import ROOT, run_torchrun, tiny_workspace

TRAIN = os.path.join(ROOT, "launchers", "train.py")
TARGETS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from ast_ds.checkpoint.export import copy_tokenizer

    root = tiny_workspace(tmp_path_factory.mktemp("gpt2"))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                        eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(str(root / "gpt2"), safe_serialization=True)
    copy_tokenizer(str(root / "init"), str(root / "gpt2"))
    return root


def check_exported(folder):
    """Loads in GPT2LMHeadModel with nothing missing; every target 2:4 along its input (its rows of [in, out]
    read down the columns), and not merely along its output."""
    from transformers import GPT2LMHeadModel

    model, info = GPT2LMHeadModel.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith(TARGETS)}
    assert len(weights) == 8
    for name, w in weights.items():
        assert w.shape[0] == model.config.n_embd or name.endswith("mlp.c_proj.weight")  # [in, out]
        assert verify_nm(w.t()).ok, name
    assert not all(verify_nm(w).ok for w in weights.values())  # the other orientation is not N:M
    return model


def args(ws, out, *extra):
    return ["--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"), "--recipe", "demo",
            "--model.path", str(ws / "gpt2"), "--data.data_dir", str(ws / "data"), "--out_dir", str(out),
            "--total_steps", "4", "--save_every", "0", "--eval_every", "0", "--log_every", "1",
            "--micro_batch", "2", "--global_batch", "4", "--sparsity.mask_interval", "2",
            "--data.weights_mode", "constant", "--optim.warmup_steps", "1", *extra]


@pytest.mark.multiprocess
def test_gpt2_trains_under_zero3_and_exports_exact_2_4_along_the_input(gpt2, tmp_path):
    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.converters import load_exported
    from ast_ds.evaluate import perplexity

    run_torchrun(TRAIN, 2, args(gpt2, tmp_path / "ast"))
    report = consolidate(str(tmp_path / "ast"), str(tmp_path / "ast_hf"), dtype="fp32")
    assert report["all_ok"] and report["num_targets"] == 8
    check_exported(tmp_path / "ast_hf")
    assert perplexity(str(tmp_path / "ast_hf"), str(gpt2 / "raw" / "test.txt"), seq_len=32, max_windows=4)["ppl"] > 1
    # SLoRB on GPT-2: the branches ride beside the Linear form; load_exported rebuilds both
    run_torchrun(TRAIN, 2, args(gpt2, tmp_path / "slorb", "--sparsity.slorb_k", "16"))
    consolidate(str(tmp_path / "slorb"), str(tmp_path / "slorb_hf"), dtype="fp32")
    model = load_exported(str(tmp_path / "slorb_hf"))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.randint(0, 256, (1, 16))).logits).all()
    assert type(model.transformer.h[0].mlp.c_fc).__name__ == "SLoRBLinear"


def test_gpt2_oneshot_quantize_and_serve_take_the_same_folders(gpt2, tmp_path):
    from ast_ds.evaluate import load_model
    from ast_ds.oneshot import prune_oneshot
    from ast_ds.quant import quantize_folder
    from ast_ds.serve import load_for_serving

    text = str(gpt2 / "raw" / "test.txt")
    for method in ("magnitude", "sparsegpt"):
        report = prune_oneshot(str(gpt2 / "gpt2"), str(tmp_path / method), method=method, calib=text, nsamples=8,
                               seq_len=32)
        assert report["all_ok"] and report["num_targets"] == 8
        check_exported(tmp_path / method)
    quantize_folder(str(tmp_path / "magnitude"), str(tmp_path / "int8"), fmt="int8", group_size=32)
    source = {n: p for n, p in load_model(str(tmp_path / "magnitude")).named_parameters() if n.endswith(TARGETS)}
    quant = {n: p for n, p in load_model(str(tmp_path / "int8")).named_parameters() if n.endswith(TARGETS)}
    for name, w in source.items():
        assert quant[name].shape == w.shape and torch.equal(quant[name][w == 0], torch.zeros(int((w == 0).sum())))
    _, _, summary = load_for_serving(str(tmp_path / "magnitude"), backend="dense", dtype="fp32", device="cpu")
    assert len(summary["dense"]) == 8 and set(summary["dense"].values()) == {"backend dense"}

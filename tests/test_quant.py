"""Quantization that keeps N:M (ast_ds/quant.py, launchers/quantize.py): the pure functions against closed
forms, GPTQ against round-to-nearest on the layer's own objective, and whole folders: every pruned weight
still exactly +0.0 after quantize -> dequantize, every target still 2:4, INT8 perplexity within 1%."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ast_ds.quant import (FP8_MAX, dequantize, group_scales, pack_int4, quantize_gptq, quantize_rtn, unpack_int4)
from ast_ds.sparsity import magnitude_nm_mask, verify_nm
from ast_ds.sparsity.oneshot_math import layer_error
from conftest import ROOT


def pruned(rows=32, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return torch.where(magnitude_nm_mask(w), w, torch.zeros(()))


def test_int4_packing_round_trips_every_code():
    codes = torch.arange(-7, 8, dtype=torch.int8).repeat(4, 2)  # [4, 30]
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    assert pack_int4(codes).shape == (4, 15) and pack_int4(codes).dtype == torch.uint8


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_round_to_nearest_keeps_zeros_and_bounds_the_error(fmt):
    w = pruned()
    stored, scales = quantize_rtn(w, fmt, group_size=64)
    back = dequantize(stored, scales, fmt)
    zero = w == 0
    assert torch.equal(back[zero], torch.zeros(int(zero.sum()))) and not torch.signbit(back[zero]).any()
    assert verify_nm(back).ok
    if fmt == "fp8":  # e4m3: 3 mantissa bits, relative error <= 2^-4 of each value (normal range)
        assert scales.shape == (32, 1) and torch.allclose(scales[:, 0], w.abs().amax(1) / FP8_MAX)
        assert ((back - w).abs() <= w.abs() * 2 ** -4 + 1e-6).all()
    else:
        qmax = {"int8": 127, "int4": 7}[fmt]
        assert torch.allclose(scales, w.abs().view(32, 4, 64).amax(-1) / qmax)
        bound = torch.repeat_interleave(scales, 64, dim=1) / 2
        assert ((back - w).abs() <= bound + 1e-7).all()
        # the group's largest |w| is representable exactly (it defines the scale)
        assert torch.allclose(back.abs().view(32, 4, 64).amax(-1), w.abs().view(32, 4, 64).amax(-1))


def test_all_zero_group_has_a_finite_scale():
    w = torch.zeros(2, 8)
    assert torch.equal(group_scales(w, qmax=7, group_size=4), torch.ones(2, 2))
    assert torch.equal(dequantize(*quantize_rtn(w, "int4", group_size=4), "int4"), w)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_gptq_beats_rtn_on_the_layer_objective_without_filling_pruned_positions(fmt):
    g = torch.Generator().manual_seed(1)
    w = pruned(rows=48, cols=128, seed=2)
    mix = torch.randn(128, 128, generator=g) * 0.3 + torch.eye(128)  # correlated inputs: where GPTQ helps
    x = torch.randn(512, 128, generator=g) @ mix
    rtn = dequantize(*quantize_rtn(w, fmt, group_size=32), fmt)
    gptq = dequantize(*quantize_gptq(w, x.double().T @ x.double(), fmt, group_size=32, blocksize=64), fmt)
    assert torch.equal(gptq[w == 0], torch.zeros(int((w == 0).sum())))
    assert verify_nm(gptq).ok
    # measured 0.81-0.86 of RTN on 2:4 weights here (0.45 on dense ones: half the freedom is pinned at 0)
    assert layer_error(w, gptq, x) < 0.9 * layer_error(w, rtn, x)
    with pytest.raises(ValueError, match="int8 and int4"):
        quantize_gptq(w, x.T @ x, "fp8")


@pytest.fixture(scope="module")
def sparse_model(tmp_path_factory):
    """A tiny LLaMA trained for a few hundred steps on the demo corpus (plain torch, seconds), then magnitude
    2:4: perplexities that mean something."""
    from ast_ds.demo import init_model, make_corpus, train_tokenizer
    from ast_ds.evaluate import load_model
    from ast_ds.oneshot import calibration_inputs, prune_oneshot

    root = tmp_path_factory.mktemp("quant")
    make_corpus(str(root / "raw"), docs_per_domain=80)
    tok = train_tokenizer(str(root / "raw"), str(root / "tok"), vocab_size=200)
    init_model(str(root / "init"), tokenizer_model=tok, vocab_size=200, hidden=64, intermediate=128, layers=2, heads=2)
    model = load_model(str(root / "init")).train()
    data = calibration_inputs(str(root / "raw" / "test.txt"), tokenizer_dir=str(root / "init"), nsamples=256,
                              seq_len=64, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(150):
        ids = data[torch.randint(0, len(data), (16,))]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(root / "dense"), safe_serialization=True)
    for f in os.listdir(root / "init"):
        if f.startswith("tokenizer"):
            os.link(root / "init" / f, root / "dense" / f)
    prune_oneshot(str(root / "dense"), str(root / "sparse"), method="magnitude")
    return root


def targets_of(model):
    return {n: p.detach() for n, p in model.named_parameters() if n.endswith("proj.weight")}


def test_quantized_folders_keep_2_4_and_int8_perplexity_within_one_percent(sparse_model):
    from ast_ds.evaluate import load_model, perplexity
    from ast_ds.quant import quantize_folder

    root, text = sparse_model, str(sparse_model / "raw" / "test.txt")
    source = targets_of(load_model(str(root / "sparse")))
    ppl = {"2:4": perplexity(str(root / "sparse"), text, seq_len=64, max_windows=24)["ppl"]}
    for fmt, method in (("int8", "rtn"), ("int4", "rtn"), ("int4", "gptq"), ("fp8", "rtn")):
        out = root / f"{fmt}_{method}"
        report = quantize_folder(str(root / "sparse"), str(out), fmt=fmt, method=method, group_size=32,
                                 calib=text if method == "gptq" else None, nsamples=32, seq_len=64)
        assert report["num_targets"] == len(source) == 14
        info = json.load(open(out / "quantization.json"))
        assert info["format"] == fmt and info["method"] == method
        loaded = targets_of(load_model(str(out)))
        for name, w in source.items():
            q = loaded[name]
            assert torch.equal(q[w == 0], torch.zeros(int((w == 0).sum()))), f"{fmt}/{method}: {name} filled a zero"
            assert verify_nm(q).ok
        ppl[f"{fmt}_{method}"] = perplexity(str(out), text, seq_len=64, max_windows=24)["ppl"]
    assert ppl["int8_rtn"] <= ppl["2:4"] * 1.01, ppl
    assert ppl["int4_gptq"] <= ppl["int4_rtn"] * 1.02, ppl  # GPTQ no worse than RTN (usually better)
    print(ppl)


def test_launcher_prints_perplexities_and_refuses_bad_input(sparse_model, tmp_path):
    root = sparse_model
    cmd = [sys.executable, os.path.join(ROOT, "launchers", "quantize.py"), "--model", str(root / "sparse"),
           "--format", "int8", "--group_size", "32", "--out", str(tmp_path / "q"), "--eval_data",
           str(root / "raw" / "test.txt"), "--seq_len", "64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["pruned_stay_zero"] and last["nm_ok"] and last["ppl_ratio"] <= 1.01
    bad = subprocess.run(cmd[:4] + ["--format", "int4", "--method", "gptq", "--out", str(tmp_path / "g")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--calib" in bad.stderr and not (tmp_path / "g").exists()

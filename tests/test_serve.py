"""The serving helper (ast_ds/serve.py, launchers/serve.py) and bench_inference.py on a machine without a GPU:
which linears are eligible for 2:4 kernels, the dense backend generating text, clear errors for the GPU
backends, and the benchmark skipping cleanly."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ast_ds.serve import eligible, sparsify
from ast_ds.sparsity import magnitude_nm_mask
from conftest import ROOT


def two_four(rows, cols):
    w = torch.randn(rows, cols)
    return torch.where(magnitude_nm_mask(w), w, torch.zeros(()))


def test_eligible_needs_exact_2_4_and_kernel_shapes():
    assert eligible(two_four(64, 128)) == (True, "")
    ok, why = eligible(torch.randn(64, 128))
    assert not ok and why == "not 2:4"
    ok, why = eligible(two_four(48, 128))
    assert not ok and "multiple of 32x64" in why


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ast_ds.demo import init_model, make_corpus, train_tokenizer
    from ast_ds.oneshot import prune_oneshot

    root = tmp_path_factory.mktemp("serve")
    make_corpus(str(root / "raw"), docs_per_domain=40)
    tok = train_tokenizer(str(root / "raw"), str(root / "tok"), vocab_size=200)
    init_model(str(root / "init"), tokenizer_model=tok, vocab_size=200, hidden=64, intermediate=128, layers=2, heads=2)
    prune_oneshot(str(root / "init"), str(root / "sparse"), method="magnitude")
    return root / "sparse"


def test_dense_backend_lists_the_eligible_linears_and_gpu_backends_say_why_not(exported):
    from ast_ds.serve import load_for_serving

    model, tok, summary = load_for_serving(str(exported), backend="dense", dtype="fp32", device="cpu")
    assert summary["swapped"] == [] and len(summary["dense"]) == 14
    assert set(summary["dense"].values()) == {"backend dense"}  # every target is 2:4 and kernel-shaped
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            sparsify(model, backend="semi_structured")
    with pytest.raises(ValueError, match="choose one of"):
        sparsify(model, backend="cusparse")


def test_launcher_generates_with_the_dense_backend(exported):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launchers", "serve.py"), "--model", str(exported),
                           "--backend", "dense", "--dtype", "fp32", "--device", "cpu", "--prompt", "Once",
                           "--max_new_tokens", "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["max_logit_diff"] == 0.0 and out["kept_dense"] == 14 and out["decode_tokens_per_s"] > 0


def test_bench_inference_skips_cleanly_without_a_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_inference.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped" in json.loads(proc.stdout.strip().splitlines()[-1])

"""Golden losses guard refactors: a fixed AST+KD run (2 ranks, ZeRO-3, fp32, mask refreshes, dynamic
domain weights) and a dense run must reproduce the per-step losses in tests/assets/golden_losses.json.
When the math changes on purpose, regenerate with ``python tests/golden.py --regenerate`` (see there
for the tolerance and why)."""

import json

import pytest

import golden


@pytest.mark.multiprocess
def test_losses_match_the_golden_file(tmp_path):
    with open(golden.GOLDEN) as f:
        want = json.load(f)
    assert want["runs"] == golden.RUNS, "the golden runs' settings changed; regenerate the file on purpose"
    got = golden.run_all(str(tmp_path))
    problems = golden.compare(got, want["losses"])
    assert not problems, ("the training math moved (if on purpose: python tests/golden.py --regenerate):\n" +
                          "\n".join(problems[:20]))


def test_compare_catches_a_relative_change_of_1e5():
    want = {"ast": [{"step": 1, "loss": 5.0, "kl": 0.1, "ce": 5.5}]}
    assert golden.compare(want, want) == []
    moved = {"ast": [{"step": 1, "loss": 5.0 * (1 + 1e-5), "kl": 0.1, "ce": 5.5}]}
    assert golden.compare(moved, want) and "loss" in golden.compare(moved, want)[0]
    assert golden.compare({"ast": []}, want)  # a missing step is a failure too

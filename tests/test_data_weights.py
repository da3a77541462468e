"""Dynamic batch loading: the weight update against hand-computed values, the updater's modes,
history, plot, state, and the reference-loss helpers (single process; the 2-rank all-reduce is in
tests/test_data_loader.py)."""

import json
import math
import os

import pytest
import torch

from ast_ds.data.domain_weights import (DomainWeightUpdater, load_or_measure_ref_losses, measure_domain_losses,
                                        update_domain_weights)
from ast_ds.data.corpus import Corpus
from ast_ds.data.loader import eval_batches
from test_data_helpers import prepared, scratch


def test_update_against_hand_computed_values():
    # w = [.5, .3, .2], ℓ − ℓ_ref = [.5, −.2, 1] → clamped Δ = [.5, 0, 1]
    # w·e^Δ = [.5·1.6487213, .3, .2·2.7182818] = [.8243606, .3, .5436564], sum 1.6680170
    # softmax = [.4942160, .1798543, .3259297]; (1 − .1)·softmax + .1/3 = [.4781277, .1952022, .3266701]
    got = update_domain_weights([0.5, 0.3, 0.2], [2.0, 1.0, 3.0], [1.5, 1.2, 2.0], eta=1.0, smoothing=0.1)
    assert got == pytest.approx([0.4781277, 0.1952022, 0.3266701], abs=1e-7)
    assert sum(got) == pytest.approx(1.0, abs=1e-15)


def test_clamp_below_reference_counts_as_zero():
    # the middle domain is below its reference: with the clamp it is treated as Δ = 0, not −0.2
    clamped = update_domain_weights([0.5, 0.3, 0.2], [2.0, 1.0, 3.0], [1.5, 1.2, 2.0], eta=1.0, smoothing=0.0)
    same = update_domain_weights([0.5, 0.3, 0.2], [2.0, 1.2, 3.0], [1.5, 1.2, 2.0], eta=1.0, smoothing=0.0)
    assert clamped == pytest.approx(same, abs=1e-15)
    assert clamped == pytest.approx([0.4942160, 0.1798543, 0.3259297], abs=1e-7)
    # all domains at or below their reference: nothing changes (without smoothing)
    assert update_domain_weights([0.6, 0.4], [1.0, 1.0], [1.5, 2.0], eta=3.0, smoothing=0.0) == \
        pytest.approx([0.6, 0.4], abs=1e-15)


def test_eta_scales_the_excess_loss():
    # Δ = [0, 0.5], η = 2 → w·e^(ηΔ) = [.5, .5·e] → [1/(1+e), e/(1+e)] = [.2689414, .7310586]
    assert update_domain_weights([0.5, 0.5], [1.0, 2.0], [1.0, 1.5], eta=2.0, smoothing=0.0) == \
        pytest.approx([0.2689414, 0.7310586], abs=1e-7)


def test_smoothing():
    # a zero weight stays zero without smoothing and gets c/k with it; c = 1 gives the uniform mix
    assert update_domain_weights([1.0, 0.0], [3.0, 3.0], [1.0, 1.0], eta=1.0, smoothing=0.0) == [1.0, 0.0]
    assert update_domain_weights([1.0, 0.0], [3.0, 3.0], [1.0, 1.0], eta=1.0, smoothing=0.2) == \
        pytest.approx([0.9, 0.1], abs=1e-15)
    assert update_domain_weights([0.7, 0.2, 0.1], [5.0, 1.0, 1.0], [1.0, 1.0, 1.0], eta=1.0, smoothing=1.0) == \
        pytest.approx([1 / 3] * 3, abs=1e-15)


def test_sheared_llama_redpajama_example():
    # Sheared-LLaMA's RedPajama example (arXiv 2310.06694): initial initial weights, Δ = [.3, −.05, .2, .1, .2, .1, .4],
    # c = 1e-4, clamped as in the paper → [.6785, .0338, .0412, .0166, .0412, .0207, .1679]
    w = [0.67, 0.045, 0.045, 0.02, 0.045, 0.025, 0.15]
    delta = [0.3, -0.05, 0.2, 0.1, 0.2, 0.1, 0.4]
    got = update_domain_weights(w, delta, [0.0] * 7, eta=1.0, smoothing=1e-4)
    assert [round(x, 4) for x in got] == [0.6785, 0.0338, 0.0412, 0.0166, 0.0412, 0.0207, 0.1679]


@pytest.mark.parametrize("bad", [dict(weights=[1.0]), dict(losses=[1.0, math.nan]), dict(weights=[0.0, 0.0]),
                                 dict(eta=-1.0), dict(smoothing=1.5)])
def test_update_rejects_bad_arguments(bad):
    args = dict(weights=[0.5, 0.5], losses=[1.0, 1.0], ref_losses=[1.0, 1.0], eta=1.0, smoothing=0.0) | bad
    with pytest.raises(ValueError):
        update_domain_weights(args.pop("weights"), args.pop("losses"), args.pop("ref_losses"), **args)


def test_updater_modes_history_state_and_plot():
    domains = ["a", "b"]
    constant = DomainWeightUpdater(domains=domains, weights={"a": 3, "b": 1}, mode="constant", update_every=2)
    assert constant.weights == {"a": 0.75, "b": 0.25} and not any(constant.due(s) for s in range(10))
    assert constant.update(2, {"a": 9.0, "b": 0.0}) == {"a": 0.75, "b": 0.25}
    with pytest.raises(ValueError, match="needs ref_losses"):
        DomainWeightUpdater(domains=domains, weights={"a": 1, "b": 1}, mode="dynamic").update(2, {"a": 1, "b": 1})

    up = DomainWeightUpdater(domains=domains, weights={"a": 0.5, "b": 0.5}, mode="dynamic",
                             ref_losses={"a": 1.0, "b": 1.5}, eta=2.0, smoothing=0.0, update_every=3)
    assert [s for s in range(10) if up.due(s)] == [3, 6, 9]
    new = up.update(3, {"a": 1.0, "b": 2.0})
    assert [new["a"], new["b"]] == pytest.approx([0.2689414, 0.7310586], abs=1e-7)
    up.update(6, {"a": 0.5, "b": 1.0})  # both below reference: unchanged
    assert [s for s, _ in up.history] == [0, 3, 6] and up.history[2][1] == pytest.approx(new)
    state = json.loads(json.dumps(up.state_dict()))
    other = DomainWeightUpdater(domains=domains, weights={"a": 0.5, "b": 0.5}, mode="dynamic",
                                ref_losses={"a": 0.0, "b": 0.0}, eta=2.0, smoothing=0.0, update_every=3)
    other.load_state_dict(state)
    assert other.weights == up.weights and other.history == up.history and other.ref_losses == up.ref_losses
    assert other.update(9, {"a": 2.0, "b": 2.0}) == up.update(9, {"a": 2.0, "b": 2.0})
    with pytest.raises(ValueError, match="domains"):
        DomainWeightUpdater(domains=["a", "c"], weights={"a": 1, "c": 1}).load_state_dict(state)
    png = os.path.join(scratch("plot"), "weights.png")
    up.plot(png)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def _mean_token_loss(batch):
    """A deterministic stand-in for a model: per-row mean of the token ids."""
    return batch["input_ids"].double().mean(dim=1)


def test_measure_domain_losses_and_cached_reference():
    out = prepared()
    losses = measure_domain_losses(_mean_token_loss, Corpus(out), domains=["wiki", "code"], micro_batch=3)
    for domain in ("wiki", "code"):
        rows = torch.cat([b["input_ids"] for b in eval_batches(Corpus(out), domain=domain, micro_batch=100)])
        assert losses[domain] == pytest.approx(float(rows.double().mean()), rel=1e-12)
    capped = measure_domain_losses(_mean_token_loss, Corpus(out), domains=["wiki"], micro_batch=2, max_batches=1)
    first = next(eval_batches(Corpus(out), domain="wiki", micro_batch=2))["input_ids"]
    assert capped["wiki"] == pytest.approx(float(first.double().mean()), rel=1e-12)

    cache = os.path.join(scratch("run"), "ref_losses.json")
    calls = []

    def measure():
        calls.append(1)
        return {"wiki": 1.5, "code": 2.5}

    args = dict(cache_path=cache, domains=["wiki", "code"], measure=measure)
    assert load_or_measure_ref_losses(given=None, write=True, **args) == {"wiki": 1.5, "code": 2.5}
    assert load_or_measure_ref_losses(given=None, write=True, **args) == {"wiki": 1.5, "code": 2.5}
    assert len(calls) == 1 and json.load(open(cache)) == {"ref_losses": {"wiki": 1.5, "code": 2.5}}
    given = {"wiki": 1.0, "code": 2.0, "books": 3.0}
    assert load_or_measure_ref_losses(given=given, write=True, **args) == {"wiki": 1.0, "code": 2.0}
    with pytest.raises(ValueError, match="lack domain"):
        load_or_measure_ref_losses(given={"wiki": 1.0}, write=True, **args)
    args["domains"] = ["wiki", "code", "books"]  # the cache lacks a domain: measured again
    load_or_measure_ref_losses(given=None, write=False, **args)
    assert len(calls) == 2


def test_state_restores_weights_bit_for_bit():
    """Weights whose sum is not exactly 1.0 in floating point must come back unchanged (resume exactness)."""
    from ast_ds.data.domain_weights import DomainWeightUpdater

    updater = DomainWeightUpdater(domains=["a", "b", "c"], weights={"a": 1, "b": 1, "c": 1})
    state = updater.state_dict()
    saved = {"a": 2 / 97, "b": 1 / 89, "c": 1 - 2 / 97 - 1 / 89}
    total = sum(saved.values())
    assert total != 1.0 and any(v / total != v for v in saved.values())  # renormalising would move bits
    state["weights"] = dict(saved)
    other = DomainWeightUpdater(domains=["a", "b", "c"], weights={"a": 1, "b": 1, "c": 1})
    other.load_state_dict(state)
    assert other.weights == saved

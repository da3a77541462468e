"""lam_max auto (ast_ds/sparsity/flip_control.py): the controller against a model of the flip dynamics, its
direction and bounds, the Table 8 defaults, and the config word "auto"."""

import math

import pytest

from ast_ds.sparsity.flip_control import AdaptiveDecay, FlipController, table8_flip_target


def run(target, lam_init, lam_star, *, returns=0.05, steps=1000, interval=10, gain=1.0):
    """Each refresh a fraction a·exp(−λ/λ*) of the not-yet-flipped entries leaves the initial mask (a weak decay
    lets the mask churn) and, with a strong decay, a share of the flipped ones returns. Returns the final ratio."""
    c = FlipController(target=target, total_steps=steps, lam=lam_init, gain=gain)
    r = 0.0
    for step in range(interval, steps + 1, interval):
        lam = AdaptiveDecay(c)(step)
        r += 0.03 * math.exp(-lam / lam_star) * (1 - r) - returns * r * (1 - math.exp(-lam / lam_star))
        c.update(step, r)
    return r


@pytest.mark.parametrize("lam_star", [1e-4, 1e-3, 1e-2])
@pytest.mark.parametrize("lam_init", [1e-4, 1e-3, 1e-2])
def test_the_final_ratio_lands_in_a_25_percent_band(lam_star, lam_init):
    assert abs(run(0.05, lam_init, lam_star) / 0.05 - 1) <= 0.25


def test_irreversible_flips_land_when_the_start_is_not_far_too_weak():
    # flips that never return: starting at or above the right decay still lands; this is why lam_init is high
    for lam_star in (1e-4, 1e-3):
        assert abs(run(0.05, 1e-3, lam_star, returns=0.0) / 0.05 - 1) <= 0.25


def test_direction_and_bounds():
    c = FlipController(target=0.1, total_steps=100, lam=1e-3)
    assert c.target_at(100) == pytest.approx(0.1) and c.target_at(25) == pytest.approx(0.05)
    assert c.update(25, 0.10) > 1e-3  # twice the planned flips: a stronger decay
    lam = c.lam
    assert c.update(25, 0.0) == pytest.approx(lam / 4)  # none at all: weaker, by at most 4x per refresh
    c.lam = c.lam_cap
    assert c.update(50, 0.9) == c.lam_cap
    state = c.state_dict()
    d = FlipController(target=0.1, total_steps=100)
    d.load_state_dict(state)
    assert (d.lam, d.last) == (c.lam, c.last)
    with pytest.raises(ValueError, match="flip target"):
        FlipController(target=0.2, total_steps=100).load_state_dict(state)


def test_table8_targets_by_size():
    assert table8_flip_target(7e9) == pytest.approx(0.038)
    assert table8_flip_target(774e6) == pytest.approx(0.034)
    assert table8_flip_target(1e6) == pytest.approx((0.111 + 0.067) / 2)  # tiny models: the smallest column
    assert 0.034 < table8_flip_target(500e6) < (0.093 + 0.036) / 2


def test_the_config_takes_auto_and_numbers(tmp_path):
    from ast_ds.config import apply_overrides
    from ast_ds.recipes import get_recipe

    cfg = get_recipe("demo")
    apply_overrides(cfg, {"sparsity.lam_max": "auto"}, source="cli")
    assert cfg.sparsity.lam_max == "auto"
    apply_overrides(cfg, {"sparsity.lam_max": "3e-4"}, source="cli")
    assert cfg.sparsity.lam_max == 3e-4
    cfg.sparsity.lam_max, cfg.sparsity.mask_interval = "auto", 0
    cfg.model.path, cfg.data.data_dir = str(tmp_path), str(tmp_path)
    with pytest.raises(ValueError, match="mask_interval > 0"):
        cfg.validate(1)
    with pytest.raises(ValueError, match="wrong type"):
        apply_overrides(get_recipe("demo"), {"sparsity.lam_max": "soon"}, source="cli")


@pytest.mark.multiprocess
def test_auto_runs_logs_its_lambda_and_resumes_exactly(tmp_path_factory):
    import csv
    import os

    from conftest import ROOT, run_torchrun, tiny_workspace

    ws = tiny_workspace(tmp_path_factory.mktemp("auto"))

    def args(out, *extra):
        return [os.path.join(ROOT, "launchers", "train.py"), "--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"),
                "--recipe", "demo", "--model.path", str(ws / "init"), "--data.data_dir", str(ws / "data"),
                "--out_dir", str(out), "--total_steps", "8", "--save_every", "0", "--eval_every", "0",
                "--log_every", "1", "--micro_batch", "2", "--global_batch", "4", "--sparsity.mask_interval", "2",
                "--data.weights_mode", "constant", "--sparsity.lam_max", "auto", "--sparsity.flip_target", "0.05",
                *extra]

    def rows(out):
        with open(out / "metrics.csv") as f:
            return {int(r["step"]): r for r in csv.DictReader(f)}

    full, split = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("split")
    run_torchrun(args(full)[0], 2, args(full)[1:])
    run_torchrun(args(split)[0], 2, args(split, "--stop_at", "4")[1:])
    run_torchrun(args(split)[0], 2, args(split, "--resume", "auto")[1:])
    a, b = rows(full), rows(split)
    assert [a[s]["loss"] for s in sorted(a)] == [b[s]["loss"] for s in sorted(a)]
    lams = [float(a[s]["lam_max"]) for s in (2, 4, 6, 8)]
    assert lams == [float(b[s]["lam_max"]) for s in (2, 4, 6, 8)]  # the controller's state was restored
    assert len(set(lams)) > 1 and all(float(a[s]["lambda"]) > 0 for s in a)  # it steers λ
    assert float(a[8]["flip_target"]) == pytest.approx(0.05)

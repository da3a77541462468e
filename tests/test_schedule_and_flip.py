import pytest
import torch

from ast_ds.sparsity import DecaySchedule, FlipCounter, annealed_decay, reduce_flip_counts


def test_annealed_schedule_closed_form():
    sched = DecaySchedule(lam_max=6e-5, total_steps=1000)  # T0 defaults to T1/4 = 250
    assert sched.ramp_steps == 250
    assert sched(0) == 0.0
    assert sched(125) == pytest.approx(3e-5)
    assert sched(250) == pytest.approx(6e-5)
    assert sched(1000) == pytest.approx(6e-5)
    assert sched(600) == sched(1000)


def test_static_schedule():
    sched = DecaySchedule(lam_max=1e-4, total_steps=100, t0=0)
    assert sched(0) == sched(1) == sched(100) == 1e-4
    assert annealed_decay(5, lam_max=2.0, t0=10) == 1.0


def test_schedule_validation():
    with pytest.raises(ValueError, match="t0"):
        DecaySchedule(lam_max=1e-4, total_steps=100, t0=101)
    with pytest.raises(ValueError, match="total_steps"):
        DecaySchedule(lam_max=1e-4, total_steps=0)


def test_flip_rates():
    old = torch.tensor([True, True, False, False])
    init = torch.tensor([True, False, True, False])
    new = torch.tensor([False, True, True, False])
    c = FlipCounter()
    c.add(new=new, old=old, initial=init)
    assert (c.flips, c.init_flips, c.numel) == (2, 2, 4)
    rates = reduce_flip_counts(c)  # no process group: local == global
    assert rates == {"flip_rate": 0.5, "init_flip_rate": 0.5, "mask_numel": 4}

import pytest

from ast_ds.recipes import ABLATIONS, apply_ablation, get_recipe


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("weights", "ref_losses"):
            out.update(flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def test_expected_covers_every_ablation():
    assert set(EXPECTED) == set(ABLATIONS)


EXPECTED = {"fixed_mask": {"sparsity.mask_interval"}, "no_kd": {"distill.alpha"},
            "static": {"sparsity.ramp_fraction"}, "naive": {"sparsity.mask_interval", "sparsity.lam_max", "distill.alpha"},
            "oneshot_init": {"sparsity.init_mask"}}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_each_ablation_changes_exactly_what_it_names(name):
    base = flat(get_recipe("llama2_7b").to_dict())
    cfg = apply_ablation(get_recipe("llama2_7b"), name, init_mask="/some/pruned_model")
    changed = {k for k, v in flat(cfg.to_dict()).items() if base[k] != v}
    assert changed == EXPECTED[name]


def test_unknown_ablation_and_missing_init_mask():
    with pytest.raises(ValueError, match="unknown ablation"):
        apply_ablation(get_recipe("demo"), "nonsense")
    with pytest.raises(ValueError, match="init_mask"):
        apply_ablation(get_recipe("demo"), "oneshot_init")

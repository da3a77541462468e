import json

import pytest
import torch

from ast_ds.config import TrainConfig, add_override_arguments, apply_overrides, overrides_from_args
from ast_ds.ds_config import resolve_ds_config, teacher_ds_config
from ast_ds.optim.lr import lr_factor
from ast_ds.recipes import RECIPES, get_recipe, llama2_7b


def test_llama_recipe_has_the_paper_values():
    cfg = llama2_7b()
    assert cfg.optim.lr == 2e-5 and cfg.sparsity.lam_max == 6e-5 and cfg.sparsity.mask_interval == 10
    assert cfg.distill.alpha == pytest.approx(1 / 3) and cfg.sparsity.ramp_fraction == 0.25
    assert cfg.global_batch == 128 and cfg.total_steps == 15_000
    assert set(RECIPES) >= {"demo", "llama2_7b", "llama2_13b", "opt_125m", "opt_350m", "opt_1_3b"}


def test_overrides_from_file_and_cli(tmp_path):
    import argparse

    cfg = get_recipe("demo")
    apply_overrides(cfg, {"optim": {"lr": 5e-4}, "sparsity.pattern": "4:8"}, source="f.yaml")
    parser = argparse.ArgumentParser()
    add_override_arguments(parser)
    args = parser.parse_args(["--optim.betas", "[0.8, 0.9]", "--total_steps", "12", "--data.weights",
                              "{a: 1, b: 2}", "--sparsity.track_initial", "false", "--sparsity.lam_max", "1e-3"])
    apply_overrides(cfg, overrides_from_args(args), source="cli")
    assert cfg.optim.lr == 5e-4 and cfg.sparsity.pattern == "4:8" and cfg.optim.betas == [0.8, 0.9]
    assert cfg.sparsity.lam_max == 1e-3
    assert cfg.total_steps == 12 and cfg.data.weights == {"a": 1, "b": 2} and cfg.sparsity.track_initial is False
    with pytest.raises(ValueError, match="unknown config field 'optim.lrr'"):
        apply_overrides(cfg, {"optim.lrr": 1}, source="cli")
    with pytest.raises(ValueError, match="wrong type"):
        apply_overrides(cfg, {"total_steps": "many"}, source="cli")


def test_validation_names_field_and_fix(tmp_path):
    cfg = TrainConfig()
    cfg.model.path, cfg.data.data_dir = str(tmp_path), str(tmp_path)
    cfg.validate(world_size=8)
    cfg.global_batch = 100
    with pytest.raises(ValueError, match="global_batch"):
        cfg.validate(world_size=8)
    cfg.global_batch = 128
    cfg.sparsity.pattern = "2x4"
    with pytest.raises(ValueError, match="N:M"):
        cfg.validate()
    cfg.sparsity.pattern = "2:4"
    cfg.sparsity.slorb_k, cfg.sparsity.scaling_groups = 16, 2
    with pytest.raises(ValueError, match="cannot be combined"):
        cfg.validate()
    cfg.sparsity.scaling_groups = 0
    cfg.model.path = ""
    with pytest.raises(ValueError, match="model.path"):
        cfg.validate()


def test_ds_config_auto_fill_and_conflicts():
    raw = json.load(open("ds_configs/zero3.json"))
    cfg = resolve_ds_config(raw, micro_batch=4, grad_accum=4, world_size=8, grad_clip=1.0, precision="bf16",
                            hidden_size=4096)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["train_batch_size"] == 128 and cfg["bf16"]["enabled"] is True
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    assert cfg["zero_allow_untested_optimizer"] is True
    raw["train_micro_batch_size_per_gpu"] = 8
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu = 8 conflicts"):
        resolve_ds_config(raw, micro_batch=4, grad_accum=4, world_size=8, grad_clip=1.0, precision="bf16",
                          hidden_size=64)
    raw["train_micro_batch_size_per_gpu"] = "auto"
    raw["optimizer"] = {"type": "AdamW"}
    with pytest.raises(ValueError, match="optimizer"):
        resolve_ds_config(raw, micro_batch=4, grad_accum=4, world_size=8, grad_clip=1.0, precision="bf16",
                          hidden_size=64)
    offload = json.load(open("ds_configs/zero3_offload.json"))
    cfg = resolve_ds_config(offload, micro_batch=1, grad_accum=1, world_size=1, grad_clip=0.0, precision="fp32",
                            hidden_size=64)
    assert cfg["zero_force_ds_cpu_optimizer"] is False and cfg["bf16"]["enabled"] is False
    t = teacher_ds_config(cfg)
    assert "optimizer" not in t and t["zero_optimization"]["stage"] == 3


def test_lr_schedule():
    f = lambda s: lr_factor(s, warmup=10, total=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, ast_ds, ast_ds.sparsity, ast_ds.config; print('deepspeed' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_config_field_is_documented_in_help():
    import argparse
    import dataclasses

    from ast_ds.config import TrainConfig, add_override_arguments, field_docs

    parser = argparse.ArgumentParser()
    add_override_arguments(parser)
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}

    def walk(cls, prefix=""):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), prefix + f.name + ".")
                continue
            assert docs.get(f.name), f"config field {prefix}{f.name} has no docstring"
            assert docs[f.name] in helps[f"--{prefix}{f.name}"]

    walk(TrainConfig)
    assert "N:M pattern" in helps["--sparsity.pattern"]


def test_dropout_is_off_by_default_in_every_field_the_config_has(tmp_path):
    from transformers import GPT2Config, LlamaConfig, OPTConfig, OPTForCausalLM

    from ast_ds.config import TrainConfig
    from ast_ds.model import load_causal_lm, set_dropout

    assert TrainConfig().model.dropout == 0.0
    assert set(set_dropout(OPTConfig(), 0.0)) == {"dropout"}  # OPT's attention/activation dropout are 0 already
    assert set(set_dropout(GPT2Config(), 0.0)) == {"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"}
    assert set_dropout(LlamaConfig(), 0.0) == {}
    tiny = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                     max_position_embeddings=32, word_embed_proj_dim=16)
    OPTForCausalLM(tiny).save_pretrained(str(tmp_path / "opt"))
    assert load_causal_lm(str(tmp_path / "opt"), ds_config=None, dtype=torch.float32, dropout=0.0).config.dropout == 0.0
    assert load_causal_lm(str(tmp_path / "opt"), ds_config=None, dtype=torch.float32, dropout=-1).config.dropout == 0.1


def test_dropout_must_be_a_probability_or_minus_one(tmp_path):
    from ast_ds.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.path, cfg.data.data_dir, cfg.model.dropout = str(tmp_path), str(tmp_path), 1.5
    with pytest.raises(ValueError, match="model.dropout"):
        cfg.validate(1)


# the paper's appendix Table 8, column by column: lr, λ_max, steps, KL weight α
TABLE8 = {"opt_125m": (1e-4, 3e-4, 40_000, 2 / 3), "opt_350m": (1e-4, 1e-4, 40_000, 2 / 3),
          "opt_1_3b": (2e-5, 6e-5, 20_000, 2 / 3), "gpt2_124m": (2e-4, 1e-4, 40_000, 2 / 3),
          "gpt2_350m": (1e-4, 6e-5, 40_000, 2 / 3), "gpt2_774m": (1e-4, 6e-5, 40_000, 2 / 3),
          "gpt2_1_5b": (6e-5, 6e-5, 20_000, 2 / 3), "llama2_7b": (2e-5, 6e-5, 15_000, 1 / 3)}


@pytest.mark.parametrize("name", list(TABLE8))
def test_recipes_follow_the_papers_table_8(name):
    cfg = get_recipe(name)
    assert (cfg.optim.lr, cfg.sparsity.lam_max, cfg.total_steps, cfg.distill.alpha) == TABLE8[name]
    assert cfg.sparsity.ramp_fraction == 0.25 and cfg.sparsity.mask_interval == 10 and cfg.model.dropout == 0.0


def test_default_targets_follow_the_model_type(tmp_path):
    from transformers import LlamaConfig, OPTConfig

    from ast_ds.model import default_targets

    for kind, config, want in (("opt", OPTConfig(), ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
                               ("llama", LlamaConfig(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"])):
        config.save_pretrained(str(tmp_path / kind))
        assert default_targets(str(tmp_path / kind)) == want
        cfg = get_recipe("demo")
        cfg.model.path, cfg.data.data_dir = str(tmp_path / kind), str(tmp_path)
        assert cfg.validate(2).sparsity.targets == want and cfg.lora.targets == want
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="no default targets for model_type 'bert'"):
        default_targets(str(tmp_path / "bert"))

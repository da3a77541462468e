"""The planner: its parts follow the closed forms of ast_ds/planner.py for a model built on the meta
device, the CLI's last line is the JSON plan, and a plan above --gpu_mem_gb warns with the offload config.
(The check against measured peaks is benchmarks/check_planner.py, docs/scaling.md.)"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 256,
         "tie_word_embeddings": False}


def test_parts_follow_the_closed_forms(tmp_path):
    from ast_ds.planner import load_hf_config, model_shape, plan_memory

    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA))
    shape = model_shape(load_hf_config(str(path)), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"])
    h, f, v, layers = 64, 176, 512, 2
    assert shape.targets == layers * (4 * h * h + 3 * h * f)
    assert shape.params == shape.targets + 2 * v * h + layers * 2 * h + h  # embeddings, lm head, norms
    ds = {"zero_optimization": {"stage3_max_live_parameters": 1e9, "reduce_bucket_size": 1000,
                                "stage3_prefetch_bucket_size": 500}}
    one = plan_memory(shape, world=1, micro_batch=2, seq_len=32, precision="bf16", sparse=True, teacher=True,
                      chunk_tokens=16, ds_cfg=ds, fused_attention=True)
    eight = plan_memory(shape, world=8, micro_batch=2, seq_len=32, precision="bf16", sparse=True, teacher=True,
                        chunk_tokens=16, ds_cfg=ds, fused_attention=True)
    p = shape.params
    assert one["fp32_masters"] == 4 * p and one["adam_moments"] == 8 * p and one["working_params"] == 2 * p
    assert one["optimizer_step"] == 4 * p and one["gradients"] == 6 * p
    assert eight["adam_moments"] == pytest.approx(8 * p / 8, abs=1) and eight["masks"] == pytest.approx(
        2 * shape.targets / 64, abs=1)
    assert one["activations"] == eight["activations"] and one["kd_loss"] == 64 * v * 2 * 3 + 4 * 16 * v * 4
    assert one["ds_buffers"] == 2 * 1500 and one["total"] == sum(v for k, v in one.items() if k != "total")
    dense = plan_memory(shape, world=8, micro_batch=2, seq_len=32, precision="bf16", sparse=False, teacher=False,
                        chunk_tokens=16, ds_cfg=ds, fused_attention=True)
    assert dense["masks"] == dense["teacher"] == 0 and dense["total"] < eight["total"]


def test_the_cli_prints_the_plan_and_warns_above_the_gpu_memory(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA))
    cmd = [sys.executable, os.path.join(ROOT, "launchers", "plan.py"), "--model", str(path), "--recipe", "demo",
           "--gpus_per_node", "2", "--seq_len", "128", "--micro_batch", "2", "--global_batch", "8"]
    fits = subprocess.run(cmd, capture_output=True, text=True, check=True)
    plan = json.loads(fits.stdout.strip().splitlines()[-1])
    assert plan["fits"] and plan["world_size"] == 2 and plan["per_gpu_bytes"]["total"] > 0
    tight = subprocess.run(cmd + ["--gpu_mem_gb", "0.001"], capture_output=True, text=True, check=True)
    assert "exceeds --gpu_mem_gb" in tight.stdout and "zero3_offload.json" in tight.stdout
    assert not json.loads(tight.stdout.strip().splitlines()[-1])["fits"]
    too_long = subprocess.run(cmd + ["--seq_len", "4096"], capture_output=True, text=True)
    assert too_long.returncode != 0 and "positions" in too_long.stderr

"""DeepSpeed JSON configs: the file owns engine knobs, the recipe owns training values.

Trainer-owned keys may be ``"auto"`` and are filled from the recipe; an explicit value that disagrees
with the recipe is an error naming both (accelerate's convention). Optimizer and scheduler blocks are
refused: the AST optimizer and the LR schedule are built in Python.
"""

from __future__ import annotations

import copy
import json
import os


def load_ds_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"--ds_config {path!r} does not exist (see ds_configs/zero3.json)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"--ds_config {path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _fill(cfg: dict, key: str, value, *, where: str, flag: str) -> None:
    current = cfg.get(key, "auto")
    if current == "auto":
        cfg[key] = value
    elif current != value:
        raise ValueError(f"ds_config {where}{key} = {current!r} conflicts with the training config ({flag} -> "
                         f"{value!r}); set it to \"auto\" in the JSON or change {flag}")


def resolve_ds_config(raw: dict, *, micro_batch: int, grad_accum: int, world_size: int, grad_clip: float,
                      precision: str, hidden_size: int, source: str = "ds_config") -> dict:
    """Fill ``"auto"`` values, check conflicts, and return the engine config for the student."""
    cfg = copy.deepcopy(raw)
    for block in ("optimizer", "scheduler"):
        if block in cfg:
            raise ValueError(f"{source}: remove the \"{block}\" block; ast_ds builds the optimizer and the LR "
                             f"schedule from the training config (optim.*)")
    if "fp16" in cfg and cfg["fp16"].get("enabled") not in (False, "auto"):
        raise ValueError(f"{source}: fp16 is not supported (loss scaling can skip steps and desynchronise the "
                         f"decay schedule); use bf16")
    _fill(cfg, "train_micro_batch_size_per_gpu", micro_batch, where="", flag="--micro_batch")
    _fill(cfg, "gradient_accumulation_steps", grad_accum, where="", flag="--global_batch")
    _fill(cfg, "train_batch_size", micro_batch * grad_accum * world_size, where="", flag="--global_batch")
    _fill(cfg, "gradient_clipping", grad_clip, where="", flag="--optim.grad_clip")
    bf16 = cfg.setdefault("bf16", {"enabled": "auto"})
    _fill(bf16, "enabled", precision == "bf16", where="bf16.", flag="--precision")
    zero = cfg.setdefault("zero_optimization", {"stage": 3})
    # Bucket sizes from the hidden size, as Hugging Face's integration does.
    _fill(zero, "reduce_bucket_size", hidden_size * hidden_size, where="zero_optimization.", flag="(model hidden size)")
    if zero.get("stage") == 3:
        _fill(zero, "stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size), where="zero_optimization.",
              flag="(model hidden size)")
        _fill(zero, "stage3_param_persistence_threshold", 10 * hidden_size, where="zero_optimization.",
              flag="(model hidden size)")
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        # A torch client optimizer under optimizer offload (DeepSpeedCPUAdam would replace it).
        cfg["zero_force_ds_cpu_optimizer"] = False
    # ASTAdamW is a client optimizer that DeepSpeed does not list as tested.
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 10**9)
    leftovers = [k for k, v in _walk(cfg) if v == "auto"]
    if leftovers:
        raise ValueError(f"{source}: no value known for \"auto\" at {', '.join(leftovers)}; set them explicitly")
    return cfg


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, prefix + k + ".")
        else:
            yield prefix + k, v


def teacher_ds_config(student_cfg: dict) -> dict:
    """An inference config for the frozen teacher: ZeRO-3 partitioned, no optimizer, no offload."""
    zero = student_cfg.get("zero_optimization", {})
    return {
        "train_micro_batch_size_per_gpu": student_cfg["train_micro_batch_size_per_gpu"],
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": bool(student_cfg.get("bf16", {}).get("enabled", False))},
        "zero_optimization": {
            "stage": 3,
            **{k: zero[k] for k in ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
                                    "reduce_bucket_size") if k in zero},
        },
        "steps_per_print": 10**9,
    }

"""Per-GPU memory and step time of a training run, before renting the cluster.

The model is built on the meta device from its Hugging Face config (no weights), so any causal-LM
family the trainer takes can be planned. Memory per rank, in bytes, by part (W ranks, ``b`` bytes per
working element: 2 in bf16, 4 in fp32; P parameters, T of them in N:M targets):

* ``fp32_masters`` 4·P/W, ``adam_moments`` 8·P/W, ``working_params`` b·P/W (ZeRO-3 partitions)
* ``gradients`` (4 + b)·P/W: the fp32 gradient partition the optimizer reads and the flat reduced one
* ``optimizer_step`` 4·P/W: fp32 temporaries of the step (gradient norm and clipping, the update)
* ``masks`` 2·T/8/W: the current and the initial mask, bit-packed (``ShardedMasks``)
* ``gathered_params``: what ZeRO-3 gathers for the forward and backward, at most
  ``stage3_max_live_parameters`` elements of the student, and as many of the teacher
* ``teacher`` b·P_teacher/W: the frozen teacher's partitions (no optimizer state)
* ``activations``: what autograd keeps per layer for the backward: per token about ``ACT_HIDDEN``·h +
  ``ACT_FFN``·f elements, plus the attention probabilities (heads × seq per token) where attention is
  not fused (CPU); with ``activation_checkpointing``, each layer's input and one layer's activations;
  plus ``BACKWARD_TRANSIENT`` layers' worth while a layer's backward runs
* ``kd_loss``: student logits, their gradient and the teacher logits (b·V per token each), and the
  chunked loss's fp32 temporaries (4 × chunk × V × 4 bytes)
* ``ds_buffers``: DeepSpeed's reduce and prefetch buckets from the ds_config (b bytes per element)

Step time: 6·P·tokens (8 with activation checkpointing) for the student's forward and backward and 2·P·tokens for the teacher's forward,
over the stated FLOP/s per GPU, plus the ZeRO-3 traffic (gather params twice, reduce-scatter grads,
teacher gather once: b·(3·P + P_teacher) bytes per step per rank) over the stated bandwidth.
``tests/test_planner.py`` and ``benchmarks/check_planner.py`` compare the totals with measured peaks.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

ACT_HIDDEN = 18  # elements per token and layer kept for the backward, in units of the hidden size
ACT_FFN = 5  # ... in units of the MLP's intermediate size
# calibrated against measured CPU peaks (benchmarks/check_planner.py, docs/scaling.md): while a layer's
# backward runs, the gradients of its activations and autograd's temporaries add about 1.5 layers' worth
BACKWARD_TRANSIENT = 1.5
WORKING_BYTES = {"bf16": 2, "fp32": 4}


@dataclass
class ModelShape:
    params: int
    targets: int
    largest: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    max_positions: int | None


def load_hf_config(model: str):
    """A model folder, a config.json file, or a Hub-style folder: its ``PretrainedConfig``."""
    from transformers import AutoConfig

    if os.path.isfile(model):
        with open(model) as f:
            raw = json.load(f)
        model_type = raw.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"--model {model}: config.json has no model_type")
        return AutoConfig.for_model(model_type, **raw)
    if os.path.isfile(os.path.join(model, "config.json")):
        return AutoConfig.from_pretrained(model)
    raise ValueError(f"--model {model}: give a model folder or its config.json")


def model_shape(config, target_modules: list[str]) -> ModelShape:
    """Counts from the model built on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    from ast_ds.model import sparse_target_names

    from ast_ds.conv1d import conv1d_to_linear

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        conv1d_to_linear(model)  # GPT-2, as training sees it
    numel = {n: p.numel() for n, p in model.named_parameters()}
    targets = sparse_target_names(model, target_modules)
    get = lambda *names: next((int(getattr(config, n)) for n in names if getattr(config, n, None)), 0)  # noqa: E731
    hidden = get("hidden_size", "n_embd", "d_model")
    return ModelShape(params=sum(numel.values()), targets=sum(numel[t] for t in targets), largest=max(numel.values()),
                      layers=get("num_hidden_layers", "n_layer"), hidden=hidden,
                      intermediate=get("intermediate_size", "ffn_dim", "n_inner") or 4 * hidden,
                      heads=get("num_attention_heads", "n_head"), vocab=get("vocab_size"),
                      max_positions=get("max_position_embeddings", "n_positions") or None)


def _ds_number(ds_cfg: dict, key: str, default: float) -> float:
    value = ds_cfg.get("zero_optimization", {}).get(key, default)
    return default if value == "auto" else float(value)


def plan_memory(shape: ModelShape, *, world: int, micro_batch: int, seq_len: int, precision: str, sparse: bool,
                teacher: bool, chunk_tokens: int, ds_cfg: dict, fused_attention: bool,
                activation_checkpointing: bool = False) -> dict[str, int]:
    """Bytes per rank by part, and ``total``."""
    b = WORKING_BYTES[precision]
    p, w = shape.params, world
    tokens = micro_batch * seq_len
    live = _ds_number(ds_cfg, "stage3_max_live_parameters", 1e9)
    h = shape.hidden
    reduce_bucket = _ds_number(ds_cfg, "reduce_bucket_size", h * h)
    prefetch = _ds_number(ds_cfg, "stage3_prefetch_bucket_size", 0.9 * h * h)
    attention = 0 if fused_attention else shape.heads * seq_len * 4  # fp32 probabilities per token and layer
    per_layer = tokens * ((ACT_HIDDEN * h + ACT_FFN * shape.intermediate) * b + attention)
    # with checkpointing: every layer's input, and one layer's activations while it is recomputed
    kept = tokens * shape.layers * h * b + per_layer if activation_checkpointing else shape.layers * per_layer
    activations = kept + BACKWARD_TRANSIENT * per_layer
    parts = {
        "fp32_masters": 4 * p / w,
        "adam_moments": 8 * p / w,
        "working_params": b * p / w,
        "gradients": (4 + b) * p / w,
        "optimizer_step": 4 * p / w,
        "masks": 2 * shape.targets / 8 / w if sparse else 0,
        "gathered_params": b * min(p, live) * (2 if teacher else 1),
        "teacher": b * p / w if teacher else 0,
        "activations": activations,
        "kd_loss": tokens * shape.vocab * b * (3 if teacher else 2) + 4 * min(chunk_tokens, tokens) * shape.vocab * 4,
        "ds_buffers": b * (reduce_bucket + prefetch),
    }
    parts = {k: int(math.ceil(v)) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def plan_step_time(shape: ModelShape, *, world: int, global_batch: int, seq_len: int, precision: str, teacher: bool,
                   flops: float, bandwidth: float, grad_accum: int, activation_checkpointing: bool = False
                   ) -> dict[str, float]:
    """Seconds per optimizer step: compute at ``flops`` per GPU, ZeRO-3 traffic at ``bandwidth`` bytes/s."""
    tokens_per_rank = global_batch * seq_len / world
    student = 8 if activation_checkpointing else 6  # recomputing the forward adds 2·P per token
    compute = (student + (2 if teacher else 0)) * shape.params * tokens_per_rank / flops
    b = WORKING_BYTES[precision]
    traffic = grad_accum * b * shape.params * (3 + (1 if teacher else 0)) * (world - 1) / world / bandwidth
    return {"compute_s": compute, "communication_s": traffic, "step_s": compute + traffic,
            "tokens_per_s_per_gpu": tokens_per_rank / (compute + traffic)}

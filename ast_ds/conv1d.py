"""GPT-2's ``Conv1D`` layers as ``nn.Linear`` while we train, and back at export.

Hugging Face GPT-2 stores its projections (``c_attn``, ``c_proj``, ``c_fc``) as ``transformers.pytorch_utils.
Conv1D`` with the weight laid out [in, out] (y = x W + b). Everything N:M in ast_ds works on ``nn.Linear``
weights [out, in] with the groups of M along the input (last) dimension. :func:`conv1d_to_linear` swaps each
Conv1D for an ``nn.Linear`` holding the transposed weight (same function, y = x Wᵀ + b), before DeepSpeed
wraps the model; under ZeRO-3 each weight is gathered on every rank for the swap and the new linear is
partitioned by ``deepspeed.initialize`` like any other parameter. The names of the swapped weights are
recorded (``CONV1D_FILE`` in the run's hf_meta) so that consolidation writes them back as [in, out]: the
exported folder loads in ``GPT2LMHeadModel`` and each of those weights is N:M along its input dimension,
i.e. down its columns (:func:`to_linear_layout` turns it back for checking).
"""

from __future__ import annotations

import json
import os

import torch

CONV1D_FILE = "ast_ds_conv1d.json"


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported transformers has it
        return None
    return Conv1D


def conv1d_names(model: torch.nn.Module) -> list[str]:
    """Weight names of the model's Conv1D layers."""
    conv = _conv1d_class()
    return [f"{n}.weight" for n, m in model.named_modules() if conv is not None and isinstance(m, conv)]


def conv1d_to_linear(model: torch.nn.Module) -> list[str]:
    """Replace every Conv1D by an equivalent ``nn.Linear`` in place; returns the weight names swapped.
    Collective under ZeRO-3 (each weight and bias is gathered on every rank)."""
    from ast_ds.converters import _gathered

    names = conv1d_names(model)
    for weight_name in names:
        parent_name, _, child = weight_name[:-len(".weight")].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, child)
        params = [p for p in (conv.weight, conv.bias) if p is not None]
        with _gathered(params):
            weight = conv.weight.detach().t().contiguous().clone()
            bias = conv.bias.detach().clone() if conv.bias is not None else None
        in_f, out_f = weight.shape[1], weight.shape[0]
        linear = torch.nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        setattr(parent, child, linear)
    return names


def to_linear_layout(name: str, tensor: torch.Tensor, conv1d: set[str] | list[str]) -> torch.Tensor:
    """A weight as [out, in] (transposed when ``name`` was a Conv1D): its N:M groups along the last dim."""
    return tensor.t() if name in conv1d else tensor


def to_saved_layout(name: str, tensor: torch.Tensor, conv1d: set[str] | list[str]) -> torch.Tensor:
    """The layout the Hugging Face class loads ([in, out] for a Conv1D weight)."""
    return tensor.t().contiguous() if name in conv1d else tensor


def conv1d_names_of_folder(model_dir: str) -> list[str]:
    """The Conv1D weight names of a Hugging Face folder's architecture (built on the meta device: no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "gpt2":  # the only family here with Conv1D layers; skip building the others
        return []
    with torch.device("meta"):
        return conv1d_names(AutoModelForCausalLM.from_config(config))


def write_conv1d_names(folder: str, names: list[str]) -> None:
    with open(os.path.join(folder, CONV1D_FILE), "w") as f:
        json.dump(names, f, indent=1)


def read_conv1d_names(folder: str) -> list[str]:
    path = os.path.join(folder, CONV1D_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)

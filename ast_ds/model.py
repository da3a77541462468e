"""Loading Hugging Face causal LMs for training (optionally ZeRO-3 partitioned at construction) and
naming their N:M targets. Knows nothing about sparsity math or distillation."""

from __future__ import annotations

import os

import torch

from ast_ds.config import LLAMA_TARGETS

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_dir(path: str, *, what: str = "model.path") -> None:
    """A clear error unless ``path`` is a complete Hugging Face model folder."""
    if not os.path.isdir(path):
        raise ValueError(f"{what}: {path!r} is not a folder; point it at a Hugging Face model directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{what}: {path} has no config.json; it is not a Hugging Face model folder "
                         f"(save one with model.save_pretrained(path))")
    if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        raise ValueError(f"{what}: {path} has a config.json but no weights ({', '.join(WEIGHT_FILES)}); the "
                         f"download or copy is incomplete")
    index = next((f for f in WEIGHT_FILES[1::2] if os.path.isfile(os.path.join(path, f))), None)
    if index:
        import json

        with open(os.path.join(path, index)) as f:
            shards = set(json.load(f).get("weight_map", {}).values())
        missing = [s for s in sorted(shards) if not os.path.isfile(os.path.join(path, s))]
        if missing:
            raise ValueError(f"{what}: {path}/{index} lists shards that are missing: {', '.join(missing[:5])}")
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            check_safetensors(os.path.join(path, f), what=what)


def check_safetensors(path: str, *, what: str = "model.path") -> None:
    """A truncated or corrupted ``.safetensors`` file gets an error naming it (the header is parsed and
    every tensor's byte range checked against the file size; no tensor data is read)."""
    import json
    import struct

    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{what}: {path} is not a readable safetensors file ({e}); it is corrupted, copy it "
                         f"again") from None
    if 8 + n + end > size:
        raise ValueError(f"{what}: {path} is truncated ({size} bytes, its header needs {8 + n + end}); copy it again")


# default N:M / LoRA targets by Hugging Face model_type (last name component of the block linears)
TARGETS_BY_TYPE = {**{t: LLAMA_TARGETS for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                                               "phi3", "olmo", "olmo2")},
                   "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
                   "gpt2": ("c_attn", "c_proj", "c_fc")}  # Conv1D in HF, swapped to nn.Linear (ast_ds.conv1d)


def model_type(path: str) -> str:
    import json

    cfg_path = path if path.endswith(".json") else os.path.join(path, "config.json")
    with open(cfg_path) as f:
        return str(json.load(f).get("model_type", ""))


def default_targets(path: str, *, what: str = "sparsity.targets") -> list[str]:
    """The block linears of the model's family (``TARGETS_BY_TYPE``), read from its config.json."""
    kind = model_type(path)
    if kind not in TARGETS_BY_TYPE:
        raise ValueError(f"{what}: no default targets for model_type {kind!r} ({path}); name the block linears, e.g. "
                         f"--{what} q_proj,k_proj,v_proj,o_proj (known types: {', '.join(sorted(TARGETS_BY_TYPE))})")
    return list(TARGETS_BY_TYPE[kind])


# the dropout probabilities of the Hugging Face configs (LLaMA/Mistral/Qwen, OPT, GPT-2, BERT-style names)
DROPOUT_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout", "resid_pdrop",
                  "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
                  "summary_first_dropout")


def set_dropout(config, p: float) -> dict[str, tuple[float, float]]:
    """Set every dropout field ``config`` has to ``p``; returns {field: (old, new)} of those that changed."""
    changed = {}
    for name in DROPOUT_FIELDS:
        old = getattr(config, name, None)
        if isinstance(old, (int, float)) and not isinstance(old, bool) and old != p:
            setattr(config, name, p)
            changed[name] = (old, p)
    return changed


def load_causal_lm(path: str, *, ds_config: dict | None, dtype: torch.dtype, what: str = "model.path",
                   dropout: float = -1):
    """``AutoModelForCausalLM.from_pretrained``; with a stage-3 ``ds_config`` the model is built
    directly partitioned (``HfDeepSpeedConfig``), so no rank ever holds the full model. ``dropout`` >= 0 is
    written into every dropout field of the config first (see :func:`set_dropout`; the changes are logged)."""
    check_model_dir(path, what=what)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if dropout >= 0:
        changed = set_dropout(config, dropout)
        if changed:
            from ast_ds.metrics import log

            log.info("%s: dropout set to %g (%s)", what, dropout,
                     ", ".join(f"{k} was {old:g}" for k, (old, _) in changed.items()))

    keep_alive = None
    if ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # global weakref: from_pretrained builds under zero.Init
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, torch_dtype=dtype)
    finally:
        if keep_alive is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
    return model


def sparse_target_names(model: torch.nn.Module, modules: list[str]) -> list[str]:
    """Weights of the linears named ``modules`` (last name component) inside the transformer blocks.
    Embeddings, norms and the LM head stay dense."""
    names = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in modules and isinstance(module, torch.nn.Linear):
            names.append(f"{name}.weight")
    if not names:
        raise ValueError(f"sparsity.targets {modules} matched no nn.Linear in {type(model).__name__}; name the "
                         f"block linears (LLaMA: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)")
    return names


def vocab_size(model) -> int:
    return int(model.config.vocab_size)


def hidden_size(path: str) -> int:
    import json

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    return int(cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model"))

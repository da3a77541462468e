"""Weight quantization that keeps the N:M pattern: every pruned weight is still exactly 0 after
quantize -> dequantize, and no rounding or error propagation ever fills a pruned position.

Formats (all symmetric, so 0 maps to the integer 0 and back to +0.0):

* ``int8`` / ``int4``: group-wise along the input dimension (``group_size`` columns share a scale
  max|w|/qmax, qmax 127 / 7); int4 is packed two per byte. Round-to-nearest (``rtn``) or ``gptq``:
  columns are quantized left to right and each column's error is propagated to the columns not yet
  quantized through the upper Cholesky factor of H⁻¹ (H = Σ xᵀx from calibration data, the same
  statistics and layer-by-layer pass as our SparseGPT); a pruned position is quantized to exactly 0
  (its error compensated like any other), so it is never filled; group scales come from the
  error-updated kept weights when a group starts.
* ``fp8``: e4m3 with one scale per output row (max|w|/448): the format torchao's surviving 2:4 path
  (``Float8DynamicActivationFloat8WeightConfig`` with per-row granularity, Hopper) takes.

The pure functions below take and return tensors; :func:`quantize_folder` turns an exported N:M folder
into a quantized one (``<name>.weight_q`` and ``<name>.weight_scale`` per target, ``quantization.json``)
that :func:`load_quantized` dequantizes into a plain ``transformers`` model (CPU-testable fake quant).
"""

from __future__ import annotations

import json
import os

import torch

QUANT_FILE = "quantization.json"
FORMATS = ("int8", "int4", "fp8")
FP8_MAX = 448.0  # largest finite float8_e4m3fn
QMAX = {"int8": 127, "int4": 7}


# ---------------------------------------------------------------------- pure math
def group_scales(weight: torch.Tensor, *, qmax: int, group_size: int) -> torch.Tensor:
    """``[out, in / group_size]`` symmetric scales max|w| / qmax (1 for an all-zero group)."""
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"group_size {group_size} must divide the input dimension {cols}")
    amax = weight.abs().view(rows, cols // group_size, group_size).amax(dim=-1)
    return torch.where(amax > 0, amax / qmax, torch.ones((), dtype=amax.dtype))


def quantize_int(weight: torch.Tensor, scales: torch.Tensor, *, qmax: int) -> torch.Tensor:
    """int8 codes round(w / s) in [-qmax, qmax]; w = 0 gives 0."""
    expanded = torch.repeat_interleave(scales, weight.shape[1] // scales.shape[1], dim=1)
    return torch.clamp(torch.round(weight / expanded), -qmax, qmax).to(torch.int8)


def dequantize_int(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    expanded = torch.repeat_interleave(scales.float(), codes.shape[1] // scales.shape[1], dim=1)
    return codes.float() * expanded + 0.0  # + 0.0 turns a -0.0 product into +0.0


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[out, in] int8 codes in [-7, 7] -> [out, in / 2] uint8 (low nibble: even column)."""
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low, high = (packed & 0x0F).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn values, [out, 1] fp32 scales max|w_row| / 448)."""
    amax = weight.abs().amax(dim=1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones((), dtype=amax.dtype))
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def dequantize_fp8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return values.float() * scale.float() + 0.0


def quantize_rtn(weight: torch.Tensor, fmt: str, *, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Round to nearest: (stored codes, scales) in the folder's format (int4 packed)."""
    w = weight.float()
    if fmt == "fp8":
        return quantize_fp8(w)
    scales = group_scales(w, qmax=QMAX[fmt], group_size=group_size)
    codes = quantize_int(w, scales, qmax=QMAX[fmt])
    return (pack_int4(codes) if fmt == "int4" else codes), scales


def dequantize(stored: torch.Tensor, scales: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "fp8":
        return dequantize_fp8(stored, scales)
    return dequantize_int(unpack_int4(stored) if fmt == "int4" else stored, scales)


def quantize_gptq(weight: torch.Tensor, hessian: torch.Tensor, fmt: str, *, group_size: int = 128,
                  blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ on an N:M weight without filling a pruned position: columns left to right, each kept weight
    rounded to its group's grid and each pruned one (w = 0) set to exactly 0, the column's error propagated
    to the later columns through H⁻¹ (SparseGPT's joint prune-and-quantize treatment, with the mask given).
    Returns what :func:`quantize_rtn` returns (int formats)."""
    if fmt not in QMAX:
        raise ValueError(f"--method gptq supports int8 and int4, not {fmt}")
    qmax = QMAX[fmt]
    W = weight.detach().double().clone()
    keep = W != 0
    rows, cols = W.shape
    if cols % group_size:
        raise ValueError(f"group_size {group_size} must divide the input dimension {cols}")
    blocksize = max(blocksize // group_size, 1) * group_size  # a group never straddles two blocks
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros(rows, cols, dtype=torch.int8)
    scales = torch.ones(rows, cols // group_size, dtype=torch.float64)
    for b0 in range(0, cols, blocksize):
        b1 = min(cols, b0 + blocksize)
        W1, Hinv1, keep1 = W[:, b0:b1].clone(), Hinv[b0:b1, b0:b1], keep[:, b0:b1]
        Err1 = torch.zeros_like(W1)
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:  # the group's scale from its error-updated kept weights
                scales[:, col // group_size] = group_scales(W1[:, i:i + group_size] * keep1[:, i:i + group_size],
                                                            qmax=qmax, group_size=group_size)[:, 0]
            s = scales[:, col // group_size]
            # a pruned position is "quantized" to exactly 0 and its error compensated like any other
            q = torch.where(keep1[:, i], torch.clamp(torch.round(W1[:, i] / s), -qmax, qmax), torch.zeros((), dtype=W.dtype))
            codes[:, col] = q.to(torch.int8)
            err = (W1[:, i] - q * s) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, b1:] -= Err1 @ Hinv[b0:b1, b1:]
    codes = torch.where(keep, codes, torch.zeros((), dtype=torch.int8))
    scales = scales.float()
    return (pack_int4(codes) if fmt == "int4" else codes), scales


# ---------------------------------------------------------------------- folders
def _target_names(state_dict: dict, modules) -> list[str]:
    from ast_ds.oneshot import target_keys

    return target_keys(state_dict, modules)


def quantize_folder(model_dir: str, out: str, *, fmt: str, method: str = "rtn", group_size: int = 128,
                    pattern: str = "2:4", modules=None, calib: str | None = None, nsamples: int = 128,
                    seq_len: int = 2048, blocksize: int = 128, percdamp: float = 0.01, overwrite: bool = False,
                    seed: int = 0, device: str = "cpu") -> dict:
    """Quantize an exported N:M folder's target linears; refuse to write unless every pruned weight is
    still exactly 0 after dequantization and every target is still N:M."""
    from ast_ds.checkpoint.export import load_hf_state_dict, write_hf_folder
    from ast_ds.model import check_model_dir, default_targets
    from ast_ds.sparsity.nm_mask import parse_nm, verify_nm

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if method not in ("rtn", "gptq"):
        raise ValueError(f"--method {method!r}: choose rtn or gptq")
    n, m = parse_nm(pattern)
    check_model_dir(model_dir, what="--model")
    modules = modules or default_targets(model_dir, what="targets")
    from ast_ds.conv1d import conv1d_names_of_folder, conv1d_to_linear, to_linear_layout, to_saved_layout

    conv1d = conv1d_names_of_folder(model_dir)  # GPT-2: quantized as [out, in] (groups along the input)
    if method == "gptq":
        if not calib:
            raise ValueError("--method gptq needs --calib (a text/jsonl file or a data_prep folder)")
        from ast_ds.evaluate import load_model
        from ast_ds.oneshot import calibration_inputs, layerwise

        model = load_model(model_dir, device)
        conv1d_to_linear(model)
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k not in tied}
        targets = _target_names(sd, modules)
        inputs = calibration_inputs(calib, tokenizer_dir=model_dir, nsamples=nsamples, seq_len=seq_len,
                                    seed=seed).to(device)
        quantized = {}

        def process(name, linear, hessian):  # quantize, then let later blocks see the dequantized weight
            stored, scales = quantize_gptq(linear.weight.data.float().cpu(), hessian.cpu(), fmt,
                                           group_size=group_size, blocksize=blocksize, percdamp=percdamp)
            quantized[name] = (stored, scales)
            linear.weight.data.copy_(dequantize(stored, scales, fmt).to(linear.weight.dtype))

        layerwise(model, targets, inputs, stat="hessian", process=process)
    else:
        sd = load_hf_state_dict(model_dir)
        sd = {k: to_linear_layout(k, v, conv1d) for k, v in sd.items()}
        targets = _target_names(sd, modules)
        quantized = {name: quantize_rtn(sd[name], fmt, group_size=group_size) for name in targets}
    layers, bad = {}, []
    for name in targets:
        before = sd[name]
        after = dequantize(*quantized[name], fmt)
        nm = verify_nm(after, n=n, m=m)
        zeros_kept = bool(torch.equal(after[before == 0], torch.zeros_like(after[before == 0])))
        err = float(((after - before) ** 2).sum() / max(float((before ** 2).sum()), 1e-30))
        layers[name] = {"nm_ok": nm.ok, "pruned_stay_zero": zeros_kept, "rel_sq_error": err}
        if not (nm.ok and zeros_kept):
            bad.append(name)
    if bad:
        raise ValueError(f"quantization changed the N:M pattern of {bad[:3]}; nothing was written")
    tensors = {}
    for name, value in sd.items():
        if name in quantized:
            stored, scales = quantized[name]
            tensors[name + "_q"], tensors[name + "_scale"] = stored, scales.float()
        else:
            tensors[name] = to_saved_layout(name, value, conv1d)
    info = {"format": fmt, "method": method, "conv1d": [t for t in targets if t in conv1d],
            "group_size": None if fmt == "fp8" else group_size,
            "pattern": pattern, "targets": targets, "source": os.path.abspath(model_dir), "calib": calib,
            "scale_granularity": "per output row" if fmt == "fp8" else f"per {group_size} input columns"}
    report = {"pattern": pattern, "all_ok": True, "num_targets": len(targets), "quantization": info,
              "layers": layers}
    write_hf_folder(out, tensors=tensors, config_dir=model_dir, dtype="fp32", report=report, overwrite=overwrite,
                    extra_files={QUANT_FILE: info}, as_is=lambda k: k.endswith(("_q", "_scale")))
    return report


def is_quantized(model_dir: str) -> bool:
    return os.path.isfile(os.path.join(model_dir, QUANT_FILE))


def load_quantized(model_dir: str, *, dtype=torch.float32):
    """A plain ``transformers`` model whose target weights are the dequantized ones (fake quant: what
    the quantized model computes, in ``dtype``)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from ast_ds.checkpoint.export import weight_files

    with open(os.path.join(model_dir, QUANT_FILE)) as f:
        info = json.load(f)
    tensors = {}
    for file in weight_files(model_dir):
        with safe_open(os.path.join(model_dir, file), framework="pt") as sf:
            tensors.update({k: sf.get_tensor(k) for k in sf.keys()})
    state = {k: v for k, v in tensors.items() if not k.endswith(("_q", "_scale"))}
    for name in info["targets"]:
        weight = dequantize(tensors[name + "_q"], tensors[name + "_scale"], info["format"])  # [out, in]
        state[name] = weight.t() if name in info.get("conv1d", ()) else weight  # GPT-2's Conv1D: [in, out]
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), torch_dtype=dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not model.config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: quantized folder does not match its config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model

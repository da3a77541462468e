"""One-shot N:M pruning baselines (no training): HF folder -> HF folder, same format as consolidation.

* ``magnitude``: the N largest |w| of every group of M along the input dimension;
* ``wanda``: |w|·‖x_j‖ with activation norms from calibration data;
* ``sparsegpt``: OBS reconstruction with N:M selection (block 128, dampening 0.01).

Wanda and SparseGPT run layer by layer, as their papers do: the calibration inputs of block i come
from blocks 0..i−1 already pruned; statistics of all target linears of a block are collected in one
pass (forward hooks; the pass stops after the block), then the block is pruned.
"""

from __future__ import annotations

import os

import torch

from ast_ds.checkpoint.export import apply_mask, load_hf_state_dict, sparsity_report, write_hf_folder
from ast_ds.sparsity.nm_mask import magnitude_nm_mask, parse_nm


def target_keys(state_dict: dict, modules: list[str] | tuple[str, ...]) -> list[str]:
    keys = [k for k in state_dict if k.endswith(".weight") and k.rsplit(".", 2)[-2] in modules]
    if not keys:
        raise ValueError(f"no weights named like *.{{{','.join(modules)}}}.weight in the model")
    return sorted(keys)


def calibration_inputs(calib: str, *, tokenizer_dir: str, nsamples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``[nsamples, seq_len]`` token windows: random rows of a prepared folder's train splits, or random
    windows of a text/jsonl file's token stream (seeded)."""
    g = torch.Generator().manual_seed(seed)
    from ast_ds.data.corpus import Corpus

    if Corpus.is_prepared(calib):
        from ast_ds.data.loader import MultiDomainLoader

        loader = MultiDomainLoader(Corpus(calib), micro_batch=nsamples, seed=seed, rank=0, world_size=1)
        return loader.next_batch()["input_ids"]
    from ast_ds.data.tokenizer import load_tokenizer
    from ast_ds.evaluate import read_documents

    tok = load_tokenizer(tokenizer_dir)
    ids = torch.tensor([tok.bos_id] + tok.encode("\n\n".join(read_documents(calib))), dtype=torch.long)
    if len(ids) <= seq_len:
        raise ValueError(f"--calib {calib} has {len(ids)} tokens, fewer than one window of {seq_len}")
    starts = torch.randint(0, len(ids) - seq_len, (nsamples,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


class _StopForward(Exception):
    pass


@torch.no_grad()
def layerwise(model, targets: list[str], inputs: torch.Tensor, *, stat: str, process, micro_batch: int = 8) -> None:
    """Block by block: collect ``stat`` of every target linear's inputs ("sq": Σ x_j², "hessian": Σ xᵀx) in
    one pass that stops after the block, then ``process(name, linear, stat)`` each of them (in place), so
    block i's statistics come from blocks 0..i−1 already processed (Wanda, SparseGPT, GPTQ)."""
    lists = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, torch.nn.ModuleList) and
             n.endswith(("layers", "transformer.h"))]  # LLaMA: model.layers; OPT: model.decoder.layers; GPT-2: .h
    if len(lists) != 1:
        raise ValueError(f"cannot find the transformer blocks of {type(model).__name__} (a ModuleList named *layers)")
    blocks_name, blocks = lists[0]
    for index, block in enumerate(blocks):
        prefix = f"{blocks_name}.{index}."
        names = [t for t in targets if t.startswith(prefix)]
        if not names:
            continue
        linears = {t: model.get_submodule(t.rsplit(".", 1)[0]) for t in names}
        stats = {t: None for t in names}

        def collect(name):
            def hook(module, args, output):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                s = (x * x).sum(0) if stat == "sq" else x.T @ x
                stats[name] = s if stats[name] is None else stats[name] + s
            return hook

        def stop(module, args, output):
            raise _StopForward

        handles = [lin.register_forward_hook(collect(t)) for t, lin in linears.items()]
        handles.append(block.register_forward_hook(stop))
        try:
            for i in range(0, len(inputs), micro_batch):
                try:
                    model(input_ids=inputs[i:i + micro_batch], use_cache=False)
                except _StopForward:
                    pass
        finally:
            for h in handles:
                h.remove()
        for t, lin in linears.items():
            process(t, lin, stats[t])


def prune_layerwise(model, targets: list[str], inputs: torch.Tensor, *, method: str, n: int, m: int,
                    blocksize: int = 128, percdamp: float = 0.01, micro_batch: int = 8) -> None:
    """Wanda / SparseGPT on ``model`` in place, block by block (module docstring)."""
    from ast_ds.sparsity.oneshot_math import sparsegpt_prune, wanda_mask

    def process(name, lin, stat):
        w = lin.weight.data
        if method == "wanda":
            w.copy_(apply_mask(w, wanda_mask(w.float(), stat.float(), n=n, m=m)))
        else:
            pruned, keep = sparsegpt_prune(w.float(), stat, n=n, m=m, blocksize=blocksize, percdamp=percdamp)
            w.copy_(apply_mask(pruned, keep).to(w.dtype))

    layerwise(model, targets, inputs, stat="sq" if method == "wanda" else "hessian", process=process,
              micro_batch=micro_batch)


def prune_oneshot(model_dir: str, out: str, *, method: str = "magnitude", pattern: str = "2:4",
                  modules=None, dtype: str = "fp32", overwrite: bool = False, calib: str | None = None,
                  nsamples: int = 128, seq_len: int = 2048, blocksize: int = 128, percdamp: float = 0.01,
                  seed: int = 0, device: str = "cpu") -> dict:
    n, m = parse_nm(pattern)
    from ast_ds.model import check_model_dir, default_targets

    check_model_dir(model_dir, what="--model")
    modules = modules or default_targets(model_dir, what="targets")
    from ast_ds.conv1d import conv1d_names_of_folder, conv1d_to_linear, to_linear_layout, to_saved_layout

    conv1d = set(conv1d_names_of_folder(model_dir))  # GPT-2: pruned as [out, in], saved back as [in, out]
    if method == "magnitude":
        sd = load_hf_state_dict(model_dir)
        targets = target_keys(sd, modules)
        for k in targets:
            w = to_linear_layout(k, sd[k], conv1d)
            sd[k] = apply_mask(w, magnitude_nm_mask(w, n=n, m=m))
    elif method in ("wanda", "sparsegpt"):
        if not calib:
            raise ValueError(f"--method {method} needs --calib (a text/jsonl file or a data_prep folder)")
        from ast_ds.evaluate import load_model

        model = load_model(model_dir, device)
        conv1d_to_linear(model)
        targets = target_keys(dict(model.named_parameters()), modules)
        inputs = calibration_inputs(calib, tokenizer_dir=model_dir, nsamples=nsamples, seq_len=seq_len,
                                    seed=seed).to(device)
        prune_layerwise(model, targets, inputs, method=method, n=n, m=m, blocksize=blocksize, percdamp=percdamp)
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k not in tied}
    else:
        raise ValueError(f"--method {method!r}: choose magnitude, wanda or sparsegpt")
    report = sparsity_report(sd, targets, n=n, m=m)  # every target in its [out, in] layout here
    report.update(method=method, source=os.path.abspath(model_dir), calib=calib, nsamples=nsamples)
    sd = {k: to_saved_layout(k, v, conv1d) for k, v in sd.items()}
    write_hf_folder(out, tensors=sd, config_dir=model_dir, dtype=dtype, report=report, overwrite=overwrite)
    return report


def masks_of_pruned_folder(model_dir: str, names, *, n: int, m: int) -> dict:
    """The N:M keep-masks of a one-shot-pruned folder's target weights: the N largest |w| of every
    group, i.e. its nonzeros (exactly N per group even where a kept weight happens to be 0). Reads only
    the target tensors, one at a time (safetensors), and keeps just their bool masks."""
    from safetensors import safe_open

    from ast_ds.model import check_model_dir

    check_model_dir(model_dir, what="sparsity.init_mask")
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"sparsity.init_mask {model_dir}: no .safetensors files (export it with "
                         f"launchers/prune_oneshot.py)")
    from ast_ds.conv1d import conv1d_names_of_folder, to_linear_layout

    conv1d = set(conv1d_names_of_folder(model_dir))
    wanted, masks = set(names), {}
    for f in files:
        with safe_open(os.path.join(model_dir, f), framework="pt") as sf:
            for key in wanted & set(sf.keys()):
                masks[key] = magnitude_nm_mask(to_linear_layout(key, sf.get_tensor(key).float(), conv1d), n=n, m=m)
    missing = sorted(wanted - set(masks))
    if missing:
        raise ValueError(f"sparsity.init_mask {model_dir} lacks {missing[:3]}; prune the same model architecture")
    return masks

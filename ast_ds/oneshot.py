"""One-shot N:M pruning baselines (no training): HF folder -> HF folder, same format as consolidation.

``magnitude`` keeps the N largest |w| of every group of M along the input dimension.
"""

from __future__ import annotations

import os

from ast_ds.config import LLAMA_TARGETS
from ast_ds.export import apply_mask, load_hf_state_dict, sparsity_report, write_hf_folder
from ast_ds.sparsity.nm_mask import magnitude_nm_mask, parse_nm


def target_keys(state_dict: dict, modules: list[str] | tuple[str, ...] = LLAMA_TARGETS) -> list[str]:
    keys = [k for k in state_dict if k.endswith(".weight") and k.rsplit(".", 2)[-2] in modules]
    if not keys:
        raise ValueError(f"no weights named like *.{{{','.join(modules)}}}.weight in the model")
    return sorted(keys)


def prune_oneshot(model_dir: str, out: str, *, method: str = "magnitude", pattern: str = "2:4",
                  modules=LLAMA_TARGETS, dtype: str = "fp32", overwrite: bool = False) -> dict:
    n, m = parse_nm(pattern)
    sd = load_hf_state_dict(model_dir)
    targets = target_keys(sd, modules)
    if method == "magnitude":
        for k in targets:
            sd[k] = apply_mask(sd[k], magnitude_nm_mask(sd[k], n=n, m=m))
    else:
        raise ValueError(f"--method {method!r}: choose magnitude")
    report = sparsity_report(sd, targets, n=n, m=m)
    report.update(method=method, source=os.path.abspath(model_dir))
    write_hf_folder(out, state_dict=sd, config_dir=model_dir, dtype=dtype, report=report, overwrite=overwrite)
    return report

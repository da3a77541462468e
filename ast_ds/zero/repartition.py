"""Load a ZeRO-3 checkpoint saved by W ranks into an engine of W' ranks (any W, W'), exactly.

DeepSpeed's own loader needs the saved partition count; its universal-checkpoint route
(``ds_to_universal`` + ``load_universal_checkpoint``) writes a full converted copy first and knows only
``exp_avg``/``exp_avg_sq`` (DeepSpeed #8608). Here every rank reads, from the saved ranks' files
(memory-mapped by :class:`~ast_ds.checkpoint.zero3_files.Zero3Files`), exactly the elements of its
new slices, for the fp32 masters and every per-element optimizer state, and sets them into its
partitions, mirroring what ZeRO-3's ``_rigid_load_state_dict`` does for an equal world size:

* optimizer scalars (``step``) and param-group hyper-parameters (lr, betas, ...) from the saved ones;
  DeepSpeed's loss scaler state;
* per sub-group ``i``: ``fp32_partitioned_groups_flat[i]`` and ``optimizer.state[flat_i][key]`` filled
  param by param (rank r' of W' holds elements ``[r'·pn', (r'+1)·pn')`` of each parameter, pn' =
  ``partition_numel()``; the padding tail stays 0);
* the lr schedule, ``global_steps``, ``global_samples``, ``skipped_steps`` and the buffers restored;
* then (the caller, once every rank filled its partitions) the working partitions rewritten from the
  masters with :func:`~ast_ds.zero.adapter.write_masters_to_working`, the one collective.

Values are copied, never recomputed, so the gathered masters and moments equal the saved ones bit for
bit. DeepSpeed internals used (beyond the adapter's): ``optimizer.state``, ``param_groups``,
``loss_scaler``, ``dynamic_loss_scale``, ``overflow``, ``swap_optimizer``.
"""

from __future__ import annotations

import torch

from ast_ds import collectives
from ast_ds.checkpoint.layout import CheckpointError
from ast_ds.checkpoint.zero3_files import Zero3Files


def check_engine(engine) -> None:
    zopt = engine.optimizer
    if not hasattr(zopt, "fp32_partitioned_groups_flat"):
        raise CheckpointError("resuming on another number of ranks needs ZeRO stage 3 (set zero_optimization.stage "
                              "= 3), or resume with the number of ranks the checkpoint was saved with")
    if getattr(zopt, "swap_optimizer", False):
        raise CheckpointError("resuming on another number of ranks does not support NVMe optimizer swapping; "
                              "resume with the saved number of ranks, or offload the optimizer to cpu")


@torch.no_grad()
def fill_partitions(engine, files: Zero3Files) -> None:
    """Local, no collective: fill this rank's fp32 master and optimizer-state partitions, the optimizer
    scalars and hyper-parameters, the loss scaler, the schedule, counters and buffers from ``files``.
    Then, once every rank succeeded, :func:`~ast_ds.zero.adapter.write_masters_to_working` (collective)."""
    check_engine(engine)
    zopt = engine.optimizer
    rank = collectives.rank_world()[0]
    names = {p: n for n, p in engine.module.named_parameters()}
    scalars = files.scalar_state()
    keys = files.tensor_state_keys()
    for i, params in enumerate(zopt.fp16_groups):
        flat = zopt.fp32_partitioned_groups_flat[i]
        state = zopt.optimizer.state[flat]
        state.clear()
        state.update({k: v.clone() if torch.is_tensor(v) else v for k, v in scalars.items()})  # one per group
        for key in keys:
            state[key] = torch.zeros_like(flat)
        offset = 0
        for p in params:
            name, pn = names.get(p), p.partition_numel()
            if name not in files.entries:
                raise CheckpointError(f"{files.tag_dir} has no saved weights for {name}: the checkpoint is from "
                                      f"another model or converter setting")
            if tuple(files.entries[name].shape) != tuple(p.ds_shape):
                raise CheckpointError(f"{name} has shape {tuple(p.ds_shape)} here and "
                                      f"{tuple(files.entries[name].shape)} in {files.tag_dir}")
            start = rank * pn
            length = max(0, min(pn, p.ds_numel - start))
            if length:
                flat[offset: offset + length] = files.read(name, start, length).to(flat.device)
                for key in keys:
                    state[key][offset: offset + length] = files.read(name, start, length, key).to(flat.device)
            offset += pn
    _restore_param_groups(zopt.optimizer, files.param_groups)
    zopt.loss_scaler = files.loss_scaler["loss_scaler"]
    zopt.dynamic_loss_scale = files.loss_scaler["dynamic_loss_scale"]
    zopt.overflow = files.loss_scaler["overflow"]
    ms = files.model_states
    if engine.lr_scheduler is not None and ms.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(ms["lr_scheduler"])
    engine.global_steps, engine.skipped_steps = int(ms["global_steps"]), int(ms["skipped_steps"])
    engine.global_samples = int(ms.get("global_samples", engine.global_steps * engine.train_batch_size()))
    buffers = dict(engine.module.named_buffers())
    for name, value in files.buffers().items():
        if name in buffers:
            buffers[name].data.copy_(value.to(buffers[name].device))


def _restore_param_groups(optimizer, saved: list[dict]) -> None:
    if len(saved) != len(optimizer.param_groups):
        raise CheckpointError(f"the checkpoint's optimizer has {len(saved)} parameter groups, this run's has "
                              f"{len(optimizer.param_groups)}: resume with the same optimizer settings")
    for group, old in zip(optimizer.param_groups, saved):
        group.update({k: v for k, v in old.items() if k != "params"})

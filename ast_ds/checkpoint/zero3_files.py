"""Read one ZeRO-3 checkpoint tag's DeepSpeed files tensor by tensor, without loading the model.

DeepSpeed (0.19) saves per rank r of W, for every parameter in the order of ``param_shapes`` (a list of
dicts, one per optimizer param group), the rank's slice of ``ceil(numel / W)`` elements (the last rank's
slice zero padded), concatenated into the rank's flat fp32 sub-group partitions (``fp32_flat_groups``
in ``*_optim_states.pt``); the base optimizer's per-element state (``exp_avg``, ``exp_avg_sq``) has the
same layout, one entry per sub-group, and its scalars (``step``) beside it. This module opens every
rank's file memory-mapped and stitches any element range of any parameter on demand, so a reader
touches only the bytes it asks for: a whole tensor for streaming consolidation, or one new rank's
slice for resuming on another world size. It is the only code that knows this file layout (the
names of the files are in :mod:`ast_ds.checkpoint.layout`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ast_ds.checkpoint.layout import CheckpointError, ds_model_file, ds_optim_file

# keys of DeepSpeed's files that are its own; the rest of a model-states file is the client_state
DS_MODEL_KEYS = frozenset({"module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
                           "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "skipped_steps",
                           "global_steps", "global_samples", "dp_world_size", "mp_world_size",
                           "checkpoint_parallel_dimensions", "ds_config", "ds_version"})


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: torch.Size
    numel: int
    partition_numel: int  # ceil(numel / W): each rank's slice, padding included
    sub_group: int  # index into each rank's fp32_flat_groups
    offset: int  # first element of the slice inside that sub-group's flat partition


def _load(path: str, *, mmap: bool) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
    except Exception as e:  # noqa: BLE001 - unpickling/zip errors mean a damaged file
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e}); the checkpoint is corrupted") from None


class Zero3Files:
    """The DeepSpeed files of one ZeRO-3 tag saved by ``world_size`` ranks, memory-mapped."""

    def __init__(self, tag_dir: str, world_size: int):
        self.tag_dir, self.world_size = tag_dir, int(world_size)
        self.model_states = _load(ds_model_file(tag_dir, 0), mmap=False)  # small: shapes, schedule, client state
        optim = [_load(ds_optim_file(tag_dir, r), mmap=True)["optimizer_state_dict"] for r in range(self.world_size)]
        stage = int(optim[0].get("zero_stage", 0))
        if stage != 3:
            raise CheckpointError(f"{tag_dir} was saved with ZeRO stage {stage}; only ZeRO-3 checkpoints can be read "
                                  f"tensor by tensor")
        if int(optim[0].get("partition_count", self.world_size)) != self.world_size:
            raise CheckpointError(f"{tag_dir}: the optimizer files are partitioned {optim[0]['partition_count']} ways "
                                  f"but the checkpoint says {self.world_size} ranks")
        self.flats = [o["fp32_flat_groups"] for o in optim]  # [rank][sub_group] flat fp32 partitions
        self.states = [o["optimizer_state_dict"]["state"] for o in optim]  # [rank][sub_group] -> {key: value}
        self.param_groups = optim[0]["optimizer_state_dict"]["param_groups"]
        self.loss_scaler = {k: optim[0][k] for k in ("loss_scaler", "dynamic_loss_scale", "overflow")}
        self.entries = self._index()

    def _index(self) -> dict[str, ParamEntry]:
        sizes = [int(f.numel()) for f in self.flats[0]]
        entries, group, offset = {}, 0, 0
        for shapes in self.model_states["param_shapes"]:
            for name, shape in shapes.items():
                numel = int(math.prod(shape))
                pn = math.ceil(numel / self.world_size)
                while group < len(sizes) and offset + pn > sizes[group]:
                    if offset != sizes[group]:
                        raise CheckpointError(f"{self.tag_dir}: the flat partitions do not match the parameter "
                                              f"shapes (at {name}); the checkpoint is from another DeepSpeed layout")
                    group, offset = group + 1, 0
                if group == len(sizes):
                    raise CheckpointError(f"{self.tag_dir}: the flat partitions are too small for {name}")
                entries[name] = ParamEntry(name, torch.Size(shape), numel, pn, group, offset)
                offset += pn
        if (group, offset) != (len(sizes) - 1, sizes[-1]) and sizes:
            raise CheckpointError(f"{self.tag_dir}: {sizes[group] - offset} elements of the flat partitions belong "
                                  f"to no parameter; the checkpoint is from another DeepSpeed layout")
        return entries

    # ------------------------------------------------------------------------------------------ tensors
    def _flat(self, rank: int, sub_group: int, key: str | None) -> torch.Tensor:
        if key is None:
            return self.flats[rank][sub_group]
        try:
            return self.states[rank][sub_group][key]
        except KeyError:
            raise CheckpointError(f"{self.tag_dir}: rank {rank} has no optimizer state {key!r} (the optimizer has "
                                  f"not stepped, or is another optimizer)") from None

    def read(self, name: str, start: int, length: int, key: str | None = None) -> torch.Tensor:
        """Elements ``[start, start + length)`` of parameter ``name`` flattened: the fp32 master
        (``key=None``) or the optimizer state ``key`` (``exp_avg``, ``exp_avg_sq``)."""
        e = self.entries[name]
        if start < 0 or start + length > e.numel:
            raise IndexError(f"{name}: range [{start}, {start + length}) outside its {e.numel} elements")
        out = torch.empty(length, dtype=torch.float32)
        pos = start
        while pos < start + length:
            rank, within = divmod(pos, e.partition_numel)
            take = min(e.partition_numel - within, start + length - pos)
            flat = self._flat(rank, e.sub_group, key)
            out[pos - start: pos - start + take] = flat[e.offset + within: e.offset + within + take]
            pos += take
        return out

    def full(self, name: str, key: str | None = None) -> torch.Tensor:
        """The whole parameter ``name`` (or its optimizer state ``key``), in its shape, fp32."""
        e = self.entries[name]
        return self.read(name, 0, e.numel, key).view(e.shape)

    def scalar_state(self) -> dict:
        """The optimizer's non-tensor (or 0-d tensor) per-sub-group state, e.g. ``step``, which must agree
        on every sub-group and rank; values keep their type (torch's AdamW keeps a 0-d tensor)."""
        out: dict = {}
        for per_rank in self.states:
            for st in per_rank.values():
                for k, v in st.items():
                    if torch.is_tensor(v) and v.dim():
                        continue
                    if k not in out:
                        out[k] = v.clone() if torch.is_tensor(v) else v
                    elif (out[k].item() if torch.is_tensor(out[k]) else out[k]) != (v.item() if torch.is_tensor(v) else v):
                        raise CheckpointError(f"{self.tag_dir}: optimizer state {k!r} differs between sub-groups or "
                                              f"ranks")
        return out

    def tensor_state_keys(self) -> list[str]:
        return sorted({k for st in self.states[0].values() for k, v in st.items() if torch.is_tensor(v) and v.dim()})

    def client_state(self) -> dict:
        return {k: v for k, v in self.model_states.items() if k not in DS_MODEL_KEYS}

    def buffers(self) -> dict[str, torch.Tensor]:
        module = self.model_states.get("module") or {}
        return {k: module[k] for k in self.model_states.get("buffer_names", []) if k in module}


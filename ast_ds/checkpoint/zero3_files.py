"""Read one ZeRO-3 checkpoint tag's DeepSpeed files tensor by tensor, without loading the model.

DeepSpeed (0.19) saves per rank r of W, for every parameter in the order of ``param_shapes`` (a list of
dicts, one per optimizer param group), the rank's slice of ``ceil(numel / W)`` elements (the last rank's
slice zero padded), concatenated into the rank's flat fp32 sub-group partitions (``fp32_flat_groups``
in ``*_optim_states.pt``); the base optimizer's per-element state (``exp_avg``, ``exp_avg_sq``) has the
same layout, one entry per sub-group, and its scalars (``step``) beside it. This module indexes every
rank's file without loading it and stitches any element range of any parameter on demand, reading
only those bytes (``os.pread``; nothing is memory-mapped, so the bytes read do not stay in the
process's resident memory): a whole tensor for streaming consolidation, or one new rank's slice for
resuming on another world size. It is the only code that knows this file layout (the names of the
files are in :mod:`ast_ds.checkpoint.layout`).

A ``torch.save`` file is a zip archive whose ``data.pkl`` describes the objects and whose
``data/<key>`` entries are the raw, uncompressed tensor storages. :func:`lazy_load` unpickles
``data.pkl`` with every large tensor replaced by a :class:`LazyTensor` (file, byte offset of its
storage, dtype, element offset, shape); small tensors are read at once.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass

import torch

from ast_ds.checkpoint.layout import CheckpointError, ds_model_file, ds_optim_file

# keys of DeepSpeed's files that are its own; the rest of a model-states file is the client_state
DS_MODEL_KEYS = frozenset({"module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
                           "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "skipped_steps",
                           "global_steps", "global_samples", "dp_world_size", "mp_world_size",
                           "checkpoint_parallel_dimensions", "ds_config", "ds_version"})


class NotZero3Error(CheckpointError):
    pass


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: torch.Size
    numel: int
    partition_numel: int  # ceil(numel / W): each rank's slice, padding included
    sub_group: int  # index into each rank's fp32_flat_groups
    offset: int  # first element of the slice inside that sub-group's flat partition


LAZY_MIN_BYTES = 1 << 20  # tensors from 1 MiB are read on demand; smaller ones at once


class LazyTensor:
    """A contiguous tensor inside a ``torch.save`` zip, read by element range on demand."""

    def __init__(self, path: str, data_offset: int, dtype: torch.dtype, storage_offset: int, shape: tuple):
        self.path, self.data_offset, self.dtype = path, data_offset, dtype
        self.storage_offset, self.shape = storage_offset, torch.Size(shape)

    def numel(self) -> int:
        return int(math.prod(self.shape))

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: slice) -> torch.Tensor:
        start, stop, step = index.indices(self.numel())
        if step != 1 or self.dim() != 1:
            raise IndexError("LazyTensor reads contiguous 1-D ranges only")
        return self.read(start, max(0, stop - start))

    def read(self, start: int, length: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Elements ``[start, start + length)``, read straight into ``out`` (a new tensor by default)."""
        out = torch.empty(length, dtype=self.dtype) if out is None else out
        size = out.element_size()
        if length:
            view = memoryview(out.view(torch.uint8).numpy()).cast("B")
            fd = os.open(self.path, os.O_RDONLY)
            try:
                got = os.preadv(fd, [view], self.data_offset + (self.storage_offset + start) * size)
            finally:
                os.close(fd)
            if got != length * size:
                raise CheckpointError(f"{self.path} is truncated: the checkpoint is corrupted")
        return out

    def materialize(self) -> torch.Tensor:
        return self.read(0, self.numel()).view(self.shape)


def is_array(value) -> bool:
    """A tensor with at least one dimension, read or lazy (not a scalar such as ``step``)."""
    return isinstance(value, LazyTensor) or (torch.is_tensor(value) and value.dim() > 0)


def _entry_offsets(path: str, zf: zipfile.ZipFile) -> dict[str, int]:
    """Absolute byte offset of every stored (uncompressed) entry's data."""
    offsets = {}
    with open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset)
            header = f.read(30)
            if header[:4] != b"PK\x03\x04" or info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: unexpected zip entry {info.filename}; the file is corrupted")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
    return offsets


def lazy_load(path: str) -> dict:
    """``torch.load(path)`` with tensors of at least ``LAZY_MIN_BYTES`` left on disk as :class:`LazyTensor`."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); the checkpoint is corrupted") from None
    with zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise CheckpointError(f"{path} is not a torch.save archive; the checkpoint is corrupted")
        prefix, offsets = pkl[: -len("data.pkl")], _entry_offsets(path, zf)

        class _Storage:
            def __init__(self, dtype, key, numel):
                self.dtype, self.key, self.numel = dtype, key, numel

        def rebuild_tensor(storage, storage_offset, size, stride, *args, **kwargs):
            entry = prefix + "data/" + str(storage.key)
            lazy = LazyTensor(path, offsets[entry], storage.dtype, storage_offset, tuple(size))
            expected = tuple(torch.empty(tuple(size)).stride()) if len(size) else ()
            if tuple(stride) != expected and lazy.numel() > 1:
                raise CheckpointError(f"{path}: a non-contiguous tensor; cannot read it lazily")
            small = lazy.numel() * torch.tensor([], dtype=storage.dtype).element_size() < LAZY_MIN_BYTES
            return lazy.materialize() if small else lazy

        def rebuild_from_type(func, new_type, args, state):
            if new_type is not torch.Tensor and func is rebuild_tensor:
                raise CheckpointError(f"{path}: a tensor subclass ({new_type.__name__}); cannot read it lazily")
            return func(*args) if func is rebuild_tensor else torch._tensor._rebuild_from_type_v2(func, new_type,
                                                                                                  args, state)

        class _Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return rebuild_tensor
                if module == "torch._tensor" and name == "_rebuild_from_type_v2":
                    return rebuild_from_type
                return super().find_class(module, name)

            def persistent_load(self, saved_id):
                _, storage_type, key, _location, numel = saved_id
                with warnings.catch_warnings():  # the typed storage classes are deprecated, not their dtype
                    warnings.simplefilter("ignore")
                    dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
                return _Storage(dtype, key, numel)

        try:
            with zf.open(pkl) as f:
                return _Unpickler(f).load()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - unpickling errors mean a damaged file
            raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e}); the checkpoint is corrupted") from None


def _load(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
    except Exception as e:  # noqa: BLE001 - unpickling/zip errors mean a damaged file
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e}); the checkpoint is corrupted") from None


class Zero3Files:
    """The DeepSpeed files of one ZeRO-3 tag saved by ``world_size`` ranks, read on demand."""

    def __init__(self, tag_dir: str, world_size: int):
        self.tag_dir, self.world_size = tag_dir, int(world_size)
        self.model_states = _load(ds_model_file(tag_dir, 0))  # small: shapes, schedule, client state
        optim = [lazy_load(ds_optim_file(tag_dir, r)).get("optimizer_state_dict", {}) for r in range(self.world_size)]
        stage = int(optim[0].get("zero_stage", 0))
        if stage != 3:
            raise NotZero3Error(f"{tag_dir} was saved with ZeRO stage {stage}; only ZeRO-3 checkpoints can be read "
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
            target = out[pos - start: pos - start + take]
            if isinstance(flat, LazyTensor) and flat.dtype == out.dtype:
                flat.read(e.offset + within, take, out=target)  # straight from the file into the result
            else:
                target.copy_(flat[e.offset + within: e.offset + within + take])
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
                    if is_array(v):
                        continue
                    if k not in out:
                        out[k] = v.clone() if torch.is_tensor(v) else v
                    elif (out[k].item() if torch.is_tensor(out[k]) else out[k]) != (v.item() if torch.is_tensor(v) else v):
                        raise CheckpointError(f"{self.tag_dir}: optimizer state {k!r} differs between sub-groups or "
                                              f"ranks")
        return out

    def tensor_state_keys(self) -> list[str]:
        return sorted({k for st in self.states[0].values() for k, v in st.items() if is_array(v)})

    def client_state(self) -> dict:
        return {k: v for k, v in self.model_states.items() if k not in DS_MODEL_KEYS}

    def buffers(self) -> dict[str, torch.Tensor]:
        module = self.model_states.get("module") or {}
        return {k: module[k] for k in self.model_states.get("buffer_names", []) if k in module}


"""Shard-local N:M masks for DeepSpeed ZeRO-3: the adapter between :class:`ASTAdamW` and the engine.

What ZeRO-3 does (DeepSpeed 0.19.x; the internals relied on are listed in docs/design.md): each rank holds a flat 1/W
slice of every parameter; parameters are grouped into *sub-groups*; per sub-group ``i`` the rank has
a fp32 master ``zopt.fp32_partitioned_groups_flat[i]`` (the concatenation of its params' slices) and
16-bit working slices ``param.ds_tensor`` that forward passes all-gather. ``zopt.step()`` calls the
client optimizer once per sub-group with ``param_groups[g]['params'] == [fp32_flat]``, then copies
fp32 -> working slices (``_reassign_or_swap_out_partitioned_parameters``), then re-gathers persistent
(small) parameters in ``_post_step``.

This adapter:

* maps every named target weight to its local run in each sub-group's flat partition
  (rank r holds flat elements ``[r·pn, (r+1)·pn)`` of the weight, the valid ones being those below
  ``ds_numel``: the padding tail never enters a mask);
* keeps the keep-mask and the initial mask of those runs **bit-packed** on each rank (1/8 byte per
  local target element each): no rank holds a full-size mask;
* refreshes them shard-locally from the fp32 master when :class:`ASTAdamW` asks; a group of M that
  straddles a partition boundary is completed with one ``all_gather`` per sub-group of the first and
  last M−1 valid elements of every target slice (only when some partition size is not a multiple of
  M, which depends on the layout only, so every rank makes the same call);
* after DeepSpeed copies fp32 -> working partitions, zeroes the pruned positions there, and
  does the same once in :meth:`bind`, before the first forward. The forward therefore gathers the
  exact N:M model while the fp32 master stays dense.

The DeepSpeed internals used are ``fp16_groups``, ``fp32_partitioned_groups_flat``, ``ds_tensor``,
``_reassign_or_swap_out_partitioned_parameters``, ``_partition_all_parameters``,
``persistent_parameters`` and ``invalidate_secondary_tensor``; tests/test_zero3_equivalence.py pins
them against the single-process reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from ast_ds.collectives import all_reduce_floats, reduce_device
from ast_ds.sparsity.flip import FlipCounter, reduce_flip_counts
from ast_ds.sparsity.nm_mask import check_nm, nm_mask_flat, pack_bits, unpack_bits
from ast_ds.sparsity.slices import gather_bits, index_slices


@dataclass
class Segment:
    """The local run of one target weight inside a sub-group's flat fp32 partition."""

    name: str
    param: torch.nn.Parameter  # the ZeRO-3 parameter (its ds_tensor is the working slice)
    offset: int  # first element of this param's slice inside the flat partition
    length: int  # valid (non-padding) elements of the slice on this rank
    global_start: int  # index of the slice's first element in param.view(-1)
    numel: int  # ds_numel of the full weight
    partition_numel: int  # slice size on every rank (pn)


@dataclass
class _SubGroup:
    index: int
    segments: list[Segment]
    group: object  # process group over which these params are partitioned
    rank: int
    world_size: int
    needs_exchange: bool
    packed: torch.Tensor | None = None
    initial: torch.Tensor | None = None

    @property
    def target_numel(self) -> int:
        return sum(s.length for s in self.segments)


@torch.no_grad()
def write_masters_to_working(zopt, after_sub_group=None) -> None:
    """Copy every fp32 master partition into its parameter's working (16-bit or fp32) partition, call
    ``after_sub_group(i)`` per sub-group (the masks zero their pruned positions there), and re-gather
    the persistent parameters, as DeepSpeed's own step does. Collective: every rank calls."""
    zopt._partition_all_parameters()
    for i, params in enumerate(zopt.fp16_groups):
        flat, offset = zopt.fp32_partitioned_groups_flat[i], 0
        for p in params:
            pn = p.partition_numel()
            p.ds_tensor.data.view(-1).copy_(flat.narrow(0, offset, pn).to(p.ds_tensor.device))
            offset += pn
        if after_sub_group is not None:
            after_sub_group(i)
    if zopt.persistent_parameters:
        zopt.persistent_parameters[0].all_gather(zopt.persistent_parameters)
    zopt.invalidate_secondary_tensor()


class ShardedMasks:
    """The :class:`~ast_ds.optim.ast_adamw.MaskStore` of a ZeRO-3 engine (module docstring).

    Create it before ``deepspeed.initialize`` (the optimizer needs it), then call :meth:`bind` with the
    engine on every rank.
    """

    def __init__(self, targets: Iterable[str], *, n: int = 2, m: int = 4, track_initial: bool = True,
                 mask_forward: bool = True):
        """``mask_forward=False`` (CAST): the masks steer only the optimizer; the forward stays dense."""
        check_nm(n, m)
        self.n, self.m = n, m
        self.mask_forward = mask_forward
        self.target_names = set(targets)
        self.track_initial = track_initial
        self.counter = FlipCounter()
        self._subgroups: dict[int, _SubGroup] = {}  # id(fp32 flat) -> layout
        self._by_index: list[_SubGroup] = []
        self._scratch: tuple[int, torch.Tensor] | None = None  # (sub-group, unpacked keep) between step and copy
        self._zopt = None

    # ------------------------------------------------------------------ set-up
    def bind(self, engine, *, initial_keep: dict[str, torch.Tensor] | None = None) -> "ShardedMasks":
        """Map the targets onto ``engine``'s partitions, compute the initial masks (magnitude of W₀, or
        this rank's slices of ``initial_keep``: full bool masks by name, e.g. from a one-shot method),
        write ``W ⊙ m`` into the working partitions and hook DeepSpeed's fp32 -> working copy.
        Collective: every rank calls."""
        zopt = engine.optimizer
        if not hasattr(zopt, "fp32_partitioned_groups_flat"):
            raise ValueError("ShardedMasks needs a ZeRO stage-3 engine: set zero_optimization.stage = 3 in the "
                             "DeepSpeed config")
        if getattr(zopt, "swap_optimizer", False) or getattr(zopt, "offload_param", False) and \
                any(f is None for f in zopt.fp16_partitioned_groups_flat):
            raise ValueError("NVMe parameter/optimizer swapping is not supported by the AST adapter; use "
                             "offload_optimizer with device 'cpu' or no offload")
        names = {p: name for name, p in engine.module.named_parameters()}
        found = set()
        for i, params in enumerate(zopt.fp16_groups):
            segments, offset = [], 0
            groups = {id(p.ds_process_group): p.ds_process_group for p in params}
            if len(groups) != 1:
                raise ValueError("parameters of one ZeRO sub-group are partitioned over different process groups "
                                 "(MiCS/hpZ layouts are not supported by the AST adapter)")
            group = next(iter(groups.values()))
            rank, world = dist.get_rank(group=group), dist.get_world_size(group=group)
            needs_exchange = False
            for p in params:
                pn = p.partition_numel()
                name = names.get(p)
                if name in self.target_names:
                    shape = tuple(p.ds_shape)
                    if len(shape) != 2 or shape[1] % self.m:
                        raise ValueError(f"sparse target {name} has shape {shape}: N:M needs a 2-D [out, in] weight "
                                         f"whose input dimension is divisible by M={self.m}")
                    start = rank * pn
                    length = max(0, min(pn, p.ds_numel - start))
                    segments.append(Segment(name, p, offset, length, start, p.ds_numel, pn))
                    needs_exchange |= pn % self.m != 0
                    found.add(name)
                offset += pn
            flat = zopt.fp32_partitioned_groups_flat[i]
            assert offset == flat.numel(), "ZeRO-3 flat partition layout changed: update ast_ds.zero.adapter"
            working = zopt.fp16_partitioned_groups_flat[i]
            if working is not None and working.data_ptr() == flat.data_ptr():
                raise RuntimeError("this DeepSpeed version aliases the fp32 master and the working weights; masking "
                                   "the forward would zero the dense master. Use bf16 or report the version")
            sg = _SubGroup(i, segments, group, rank, world, needs_exchange)
            self._subgroups[id(flat)] = sg
            self._by_index.append(sg)
        missing = self.target_names - found
        if missing:
            raise ValueError(f"sparse targets not found among the engine's trainable parameters: {sorted(missing)}")
        self._zopt = zopt
        for i, sg in enumerate(self._by_index):
            if initial_keep is None:
                keep = self._compute(sg, zopt.fp32_partitioned_groups_flat[i])
            else:
                keep = self._slice_initial(sg, initial_keep, zopt.fp32_partitioned_groups_flat[i].device)
            sg.packed = pack_bits(keep)
            sg.initial = sg.packed.clone() if self.track_initial else None
        self._hook_copy(zopt)
        self.write_working_weights()
        return self

    def _slice_initial(self, sg: _SubGroup, initial_keep: dict[str, torch.Tensor], device) -> torch.Tensor:
        parts = []
        for s in sg.segments:
            full = initial_keep.get(s.name)
            if full is None or full.numel() != s.numel:
                raise ValueError(f"initial mask for {s.name} is missing or has {None if full is None else full.numel()} "
                                 f"elements, expected {s.numel}")
            if not torch.all(full.reshape(-1, self.m).sum(1) == self.n):
                raise ValueError(f"initial mask for {s.name} does not keep exactly {self.n} of every {self.m}")
            parts.append(full.reshape(-1)[s.global_start: s.global_start + s.length].to(device))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=device)

    def _hook_copy(self, zopt) -> None:
        original = zopt._reassign_or_swap_out_partitioned_parameters

        def reassign_then_mask(sub_group_id):
            original(sub_group_id)
            self._mask_working(sub_group_id)

        zopt._reassign_or_swap_out_partitioned_parameters = reassign_then_mask

    # ------------------------------------------------------------------ MaskStore protocol
    def _layout(self, flat: torch.Tensor) -> _SubGroup | None:
        return self._subgroups.get(id(flat))

    def _keep(self, sg: _SubGroup) -> torch.Tensor:
        if self._scratch is not None and self._scratch[0] == sg.index:
            return self._scratch[1]
        keep = unpack_bits(sg.packed, sg.target_numel)
        self._scratch = (sg.index, keep)
        return keep

    def runs(self, flat):
        sg = self._layout(flat)
        if sg is None:
            if self._zopt is None:
                raise RuntimeError("ShardedMasks.bind(engine) must be called after deepspeed.initialize")
            return []
        keep = self._keep(sg).to(flat.device)
        out, pos = [], 0
        for s in sg.segments:
            out.append((s.offset, s.length, keep[pos: pos + s.length]))
            pos += s.length
        return out

    def refresh(self, flat) -> None:
        sg = self._layout(flat)
        if sg is None or not sg.segments:
            return
        old = self._keep(sg)
        new = self._compute(sg, flat)
        init = unpack_bits(sg.initial, sg.target_numel) if sg.initial is not None else None
        self.counter.add(new=new, old=old.to(new.device), initial=init)
        sg.packed = pack_bits(new)
        self._scratch = (sg.index, new)

    # ------------------------------------------------------------------ mask computation
    def _compute(self, sg: _SubGroup, flat: torch.Tensor) -> torch.Tensor:
        """Keep-mask of all target runs of one sub-group (concatenated), from the fp32 master."""
        edges = self._exchange_edges(sg, flat) if sg.needs_exchange else None
        parts = []
        for j, s in enumerate(sg.segments):
            if s.length == 0:
                continue
            values = flat.detach().narrow(0, s.offset, s.length)
            end = s.global_start + s.length
            head_len, tail_len = s.global_start % self.m, (-end) % self.m
            head = self._fetch(edges, sg, j, s, s.global_start - head_len, s.global_start) if head_len else None
            tail = self._fetch(edges, sg, j, s, end, end + tail_len) if tail_len else None
            parts.append(nm_mask_flat(values, offset=s.global_start, n=self.n, m=self.m, head=head, tail=tail))
        if not parts:
            return torch.zeros(0, dtype=torch.bool, device=flat.device)
        return torch.cat(parts)

    def _exchange_edges(self, sg: _SubGroup, flat: torch.Tensor) -> torch.Tensor:
        """All-gather, for every target in the sub-group, the first and last M−1 valid elements of each
        rank's slice: ``[world, n_targets, 2, M−1]``."""
        k = self.m - 1
        device = reduce_device(sg.group)
        buf = torch.zeros(len(sg.segments), 2, k, dtype=torch.float32, device=device)
        for j, s in enumerate(sg.segments):
            take = min(k, s.length)
            if take:
                local = flat.detach().narrow(0, s.offset, s.length)
                buf[j, 0, :take] = local[:take].to(device)
                buf[j, 1, :take] = local[s.length - take:].to(device)
        gathered = [torch.empty_like(buf) for _ in range(sg.world_size)]
        dist.all_gather(gathered, buf, group=sg.group)
        return torch.stack(gathered).to(flat.device)

    def _fetch(self, edges, sg: _SubGroup, j: int, s: Segment, lo: int, hi: int) -> torch.Tensor:
        """Elements ``[lo, hi)`` of target ``j`` (a piece of one straddling group) from the gathered edges."""
        if edges is None:
            raise AssertionError("a group straddles a partition boundary but no edge exchange ran")
        k, pn = self.m - 1, s.partition_numel
        out = torch.empty(hi - lo, dtype=torch.float32, device=edges.device)
        for q in range(lo // pn, (hi - 1) // pn + 1):
            qs = q * pn
            valid = max(0, min(pn, s.numel - qs))
            a, b = max(lo, qs), min(hi, qs + valid)
            if a >= b:
                continue
            take = min(k, valid)
            if b - qs <= take:  # a prefix of rank q's slice
                out[a - lo: b - lo] = edges[q, j, 0, a - qs: b - qs]
            else:  # a suffix of rank q's slice
                tail_start = qs + valid - take
                assert a >= tail_start, "straddling group wider than the exchanged edges"
                out[a - lo: b - lo] = edges[q, j, 1, a - tail_start: b - tail_start]
        return out

    # ------------------------------------------------------------------ working weights
    def _mask_working(self, sub_group_id: int) -> None:
        sg = self._by_index[sub_group_id]
        if sg.segments and self.mask_forward:
            keep, pos = self._keep(sg), 0
            for s in sg.segments:
                if s.length:
                    working = s.param.ds_tensor.data.view(-1).narrow(0, 0, s.length)
                    # multiply, not masked_fill (3x faster on CPU); pruned positions of negative weights
                    # become -0.0, which the forward treats as 0 (consolidation writes +0.0)
                    working.mul_(keep[pos: pos + s.length].to(working.device))
                pos += s.length
        self._scratch = None

    @torch.no_grad()
    def write_working_weights(self) -> None:
        """Write ``W ⊙ m`` from the fp32 masters into every working partition and re-gather persistent
        parameters (as DeepSpeed's own step does). Collective: every rank calls. Use it after
        :meth:`bind` (done there) and after loading a checkpoint."""
        write_masters_to_working(self._zopt, after_sub_group=self._mask_working)

    # ------------------------------------------------------------------ metrics and state
    def flip_rates(self) -> dict[str, float]:
        """Global flip and initial-flip rates since the last call (collective: every rank calls)."""
        out = reduce_flip_counts(self.counter)
        self.counter.reset()
        return out

    @torch.no_grad()
    def measured_sparsity(self) -> float:
        """Fraction of zeros in the working (forward) target weights, over all ranks (collective)."""
        zeros = total = 0
        for sg in self._by_index:
            for s in sg.segments:
                if s.length:
                    working = s.param.ds_tensor.data.view(-1).narrow(0, 0, s.length)
                    zeros += int((working == 0).sum())
                    total += s.length
        zeros, total = all_reduce_floats([zeros, total])
        return zeros / total if total else 0.0

    def local_masks(self, initial: bool = False) -> dict[str, tuple[int, torch.Tensor]]:
        """``name -> (global_start, local keep slice)`` of this rank, of the current masks or (``initial``)
        the initial ones (for verification and tests)."""
        out = {}
        for sg in self._by_index:
            keep, pos = unpack_bits(sg.initial if initial else sg.packed, sg.target_numel), 0
            for s in sg.segments:
                out[s.name] = (s.global_start, keep[pos: pos + s.length].clone())
                pos += s.length
        return out

    def state_bytes(self) -> int:
        """Bytes of sparsity state held on this rank."""
        return sum(t.numel() * t.element_size() for sg in self._by_index for t in (sg.packed, sg.initial)
                   if t is not None)

    def local_numel(self) -> int:
        """Elements of this rank's flat fp32 partitions (all parameters, the denominator of state_bytes)."""
        return sum(f.numel() for f in self._zopt.fp32_partitioned_groups_flat)

    def state_dict(self) -> dict:
        return {"n": self.n, "m": self.m,
                "layout": [[(s.name, s.global_start, s.length) for s in sg.segments] for sg in self._by_index],
                "packed": [sg.packed.cpu() for sg in self._by_index],
                "initial": [None if sg.initial is None else sg.initial.cpu() for sg in self._by_index]}

    def load_state_dict(self, state: dict) -> None:
        layout = [[(s.name, s.global_start, s.length) for s in sg.segments] for sg in self._by_index]
        if (state["n"], state["m"]) != (self.n, self.m) or [[tuple(x) for x in g] for g in state["layout"]] != layout:
            raise ValueError("the saved sparsity state does not match this run's N:M pattern or partition layout "
                             "(different world size, targets or sub_group_size); resume with the same settings")
        for sg, packed, initial in zip(self._by_index, state["packed"], state["initial"]):
            sg.packed = packed.to(sg.packed.device)
            if sg.initial is not None and initial is not None:
                sg.initial = initial.to(sg.initial.device)
        self._scratch = None

    def load_resharded(self, states: list[dict]) -> None:
        """Restore from the states of *every* rank of a run saved at another world size (or with
        another sub-group layout): each element of this rank's slices comes from the saved rank that
        held it, for the current and the initial masks; nothing is recomputed from the weights. Local."""
        for st in states:
            if (st["n"], st["m"]) != (self.n, self.m):
                raise ValueError(f"the saved masks are {st['n']}:{st['m']}, this run trains {self.n}:{self.m}")
        pieces = index_slices(states)
        for sg in self._by_index:
            current, initial = [], []
            for s in sg.segments:
                cur, ini = gather_bits(pieces.get(s.name, []), s.name, s.global_start, s.length,
                                        initial=sg.initial is not None)
                current.append(cur)
                initial.append(ini)
            device = sg.packed.device
            sg.packed = pack_bits(torch.cat(current) if current else torch.zeros(0, dtype=torch.bool)).to(device)
            if sg.initial is not None:
                sg.initial = pack_bits(torch.cat(initial) if initial else torch.zeros(0, dtype=torch.bool)).to(device)
        self._scratch = None


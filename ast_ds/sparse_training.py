"""What makes a run sparse, built in one place: targets, converters (SLoRB, CAST weight scaling), the
N:M masks, the decay schedule, the optimizer rule (AST or CAST's AdamS), and their metrics and state.

``build_sparse_training(cfg)`` returns a :class:`SparseTraining` for ``mode=ast`` and a
:class:`DenseTraining` (the no-op counterpart: plain AdamW, no masks, no state) for ``mode=dense``, so the
training loop never asks which one it has. The trainer calls, in this order:

    st.check_ds_config(ds_cfg, source)      # AST needs ZeRO stage 3
    st.prepare_model(student)               # converters add parameters before DeepSpeed wraps the model
    optimizer = st.make_optimizer(groups, lr=..., betas=..., ...)
    engine = deepspeed.initialize(..., optimizer=optimizer)
    st.bind(engine)                         # initial masks; the forward now sees W ⊙ m
    ... every step: st.step_metrics(step), and when logging st.log_metrics(step)    (collectives)
    st.state_dict() / st.load_state_dict() / st.after_restore()   # per rank, through the checkpoint manager
"""

from __future__ import annotations

import torch

from ast_ds.checkpoint.layout import DECAY, META_METHOD, META_MODE, META_PATTERN, META_SCALING_GROUPS, META_SLORB_K
from ast_ds.config import SparsityConfig, TrainConfig
from ast_ds.sparsity import DecaySchedule, parse_nm


class DenseTraining:
    """``mode=dense``: no sparsity. Every hook is a no-op; the optimizer is torch's AdamW."""

    meta = {META_MODE: "dense", META_PATTERN: None, META_METHOD: None, META_SLORB_K: 0, META_SCALING_GROUPS: 0}

    def check_ds_config(self, ds_cfg: dict, source: str) -> None:
        pass

    def prepare_model(self, model: torch.nn.Module) -> None:
        pass

    def make_optimizer(self, groups, **opt_args) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, foreach=False, **opt_args)

    def bind(self, engine) -> None:
        pass

    def step_metrics(self, step: int) -> dict:
        return {}

    def log_metrics(self, step: int) -> dict:
        return {}

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state) -> None:
        pass

    def load_resharded(self, states: list) -> None:
        pass

    def after_restore(self) -> None:
        pass

    def shared_components(self) -> dict:
        return {}


class SparseTraining:
    """``mode=ast``: AST (masked forward, annealed SR-STE in AdamW) or CAST (dense forward, AdamS, hard
    prune at export), with optional SLoRB or weight scaling. The optimizer owns the masks
    (``ShardedMasks``, see docs/design.md)."""

    def __init__(self, sp: SparsityConfig, *, total_steps: int):
        self.sp, self.total_steps = sp, total_steps
        self.n, self.m = parse_nm(sp.pattern)
        t0 = 0 if sp.method == "cast" else round(sp.ramp_fraction * total_steps)  # CAST: constant λ (AdamS)
        self.auto = sp.lam_max == "auto"  # λ_max steered by the flip ratio; built once the model's size is known
        self.decay = None if self.auto else DecaySchedule(sp.lam_max, total_steps, t0=t0)
        self.masks = None
        self.meta = {META_MODE: "ast", META_PATTERN: sp.pattern, META_METHOD: sp.method, META_SLORB_K: sp.slorb_k,
                     META_SCALING_GROUPS: sp.scaling_groups}

    def check_ds_config(self, ds_cfg: dict, source: str) -> None:
        if ds_cfg["zero_optimization"].get("stage") != 3:
            raise ValueError(f"{source}: mode=ast needs ZeRO stage 3 (ds_configs/zero3.json or zero3_offload.json); "
                             f"stage 2 is for --mode dense")

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Find the targets, add the converters' parameters (ZeRO-3 then partitions them like any other)
        and create the masks the optimizer will own."""
        from ast_ds.converters import add_slorb, add_weight_scaling
        from ast_ds.model import sparse_target_names
        from ast_ds.zero import ShardedMasks

        targets = sparse_target_names(model, self.sp.targets)
        modules = dict(model.named_modules())
        for name in targets:
            cols = modules[name.rsplit(".", 1)[0]].in_features
            if cols % self.m:
                raise ValueError(f"sparsity.pattern {self.sp.pattern}: M={self.m} does not divide the input dimension "
                                 f"{cols} of {name}; choose an M that divides it or leave that linear out of "
                                 f"sparsity.targets")
        if self.sp.slorb_k:
            add_slorb(model, targets, k=self.sp.slorb_k, n=self.n, m=self.m)
        if self.sp.scaling_groups:
            add_weight_scaling(model, targets, groups=self.sp.scaling_groups)
        self.masks = ShardedMasks(targets, n=self.n, m=self.m, track_initial=self.sp.track_initial,
                                  mask_forward=self.sp.method == "ast")
        if self.auto:
            from ast_ds.sparsity.flip_control import AdaptiveDecay, FlipController, table8_flip_target

            params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # full sizes under ZeRO-3
            target = self.sp.flip_target or table8_flip_target(params)
            self.decay = AdaptiveDecay(FlipController(target=target, total_steps=self.total_steps, lam=self.sp.lam_init))

    def make_optimizer(self, groups, **opt_args) -> torch.optim.Optimizer:
        from ast_ds.optim.ast_adamw import ASTAdamW

        return ASTAdamW(groups, masks=self.masks, decay=self.decay, mask_interval=self.sp.mask_interval,
                        rule="adams" if self.sp.method == "cast" else "ast", total_steps=self.total_steps, **opt_args)

    def bind(self, engine) -> None:
        """Initial masks (magnitude of W₀, or a one-shot method's); the forward now sees W ⊙ m."""
        initial = None
        if self.sp.init_mask:
            from ast_ds.oneshot import masks_of_pruned_folder

            initial = masks_of_pruned_folder(self.sp.init_mask, self.masks.target_names, n=self.n, m=self.m)
        self.masks.bind(engine, initial_keep=initial)

    def step_metrics(self, step: int) -> dict:
        """Flip rates after each mask refresh (collective); with lam_max auto, the λ_max they steer to (every rank
        computes the same value from the all-reduced ratio)."""
        if self.sp.mask_interval and step % self.sp.mask_interval == 0:
            rates = self.masks.flip_rates()
            if self.auto:
                rates.update(lam_max=self.decay.observe(step, rates["init_flip_rate"]),
                             flip_target=self.decay.controller.target_at(step))
            return rates
        return {}

    def shared_components(self) -> dict:
        """State the checkpoint keeps once for every rank: the λ_max controller when lam_max is auto."""
        return {DECAY: self.decay} if self.auto else {}

    def log_metrics(self, step: int) -> dict:
        """λ(t) and the measured sparsity of the forward weights (collective)."""
        return {"lambda": self.decay(step), "sparsity": self.masks.measured_sparsity()}

    def state_dict(self) -> dict:
        return self.masks.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.masks.load_state_dict(state)

    def load_resharded(self, states: list[dict]) -> None:
        """From every saved rank's state, at another world size (see ``ShardedMasks.load_resharded``)."""
        self.masks.load_resharded(states)

    def after_restore(self) -> None:
        """Collective, once every rank restored its state: rewrite W ⊙ m into the working weights (the
        engine's checkpoint load refreshed them densely)."""
        self.masks.write_working_weights()


def build_sparse_training(cfg: TrainConfig):
    """The component of ``cfg.mode``: :class:`SparseTraining`, :class:`DenseTraining` or LoRA's."""
    if cfg.mode == "lora":
        from ast_ds.lora import LoRATraining

        return LoRATraining(cfg.lora, pattern=cfg.sparsity.pattern)
    return SparseTraining(cfg.sparsity, total_steps=cfg.total_steps) if cfg.mode == "ast" else DenseTraining()

"""The frozen dense teacher for distillation, or its no-op counterpart.

``build_teacher`` returns a :class:`Teacher` (an optimizer-less ZeRO-3 engine over the dense model,
partitioned like the student) when the run distils, else :class:`NoTeacher`, whose ``logits`` are None
and whose ``alpha`` is 0, so the loss reduces to cross-entropy and the loop has no teacher branch.
"""

from __future__ import annotations

import torch

from ast_ds.config import TrainConfig


class NoTeacher:
    alpha = 0.0
    engine = None

    def logits(self, input_ids: torch.Tensor) -> None:
        return None


class Teacher:
    def __init__(self, engine, *, alpha: float):
        self.engine, self.alpha = engine, alpha

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.engine(input_ids=input_ids, use_cache=False).logits


def build_teacher(cfg: TrainConfig, ds_cfg: dict, *, dtype: torch.dtype) -> Teacher | NoTeacher:
    """Distillation runs in ``mode=ast`` with ``distill.alpha > 0``; the teacher is ``model.teacher_path``
    (default: the student's starting point), frozen, in the student's precision. That it shares the
    student's family and vocabulary is checked by ``ast_ds.preflight`` before anything is loaded."""
    if cfg.mode != "ast" or cfg.distill.alpha <= 0:
        return NoTeacher()
    import deepspeed

    from ast_ds.ds_config import teacher_ds_config
    from ast_ds.model import load_causal_lm

    t_cfg = teacher_ds_config(ds_cfg)
    model = load_causal_lm(cfg.teacher_path, ds_config=t_cfg, dtype=dtype, what="model.teacher_path")
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=t_cfg)
    engine.eval()
    return Teacher(engine, alpha=cfg.distill.alpha)

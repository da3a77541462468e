"""The training story, top to bottom, in short phases:

1. distributed set-up and config          (``_setup``)
2. data: the corpus, the domain weights' owner, the loader reading them
3. sparsity: targets, converters, masks, decay, optimizer rule (``ast_ds.sparse_training``; a no-op
   counterpart in dense mode)
4. student: partitioned at construction under ZeRO-3, wrapped by DeepSpeed with that optimizer
5. teacher: the frozen dense model for KD (``ast_ds.teacher``; a no-op counterpart without KD)
6. reference losses for dynamic domain weights
7. checkpoints: one manager given every stateful component (``build`` ends here); resume, on the
   saved number of ranks or another (re-partitioned exactly)
8. the loop: KD loss, step, metrics, per-domain eval, domain-weight updates, checkpoints

Launched by ``deepspeed launchers/train.py --ds_config ds_configs/zero3.json --recipe llama2_7b ...``.
Every collective (all-reduce of metrics, flip rates, evals, checkpoint saves) runs on every rank;
only logging and writes of shared files are rank-0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ast_ds import collectives
from ast_ds.checkpoint.layout import DOMAIN_WEIGHTS, LOADER, META_MODEL, RNG, SPARSITY, TRAINER, CheckpointError, \
    checkpoints_dir, tag_name
from ast_ds.config import TrainConfig, save_resolved
from ast_ds.data.corpus import Corpus
from ast_ds.data.loader import labels_of
from ast_ds.distill import distill_loss
from ast_ds.faults import Faults
from ast_ds.guards import NonFiniteError, NonFiniteGuard, PreemptionGuard, agree_step, weights_finite
from ast_ds.memory import MemoryMeter
from ast_ds.metrics import MetricsLogger, log, setup_logging
from ast_ds.preflight import model_fingerprint, preflight


@dataclass
class TrainCounters:
    """Optimizer steps done and tokens consumed: the trainer's own state."""

    step: int = 0
    tokens: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])


def _param_groups(model, weight_decay: float):
    """Decoupled weight decay on the model's matrices only: not on norms, biases, or the converters'
    parameters (a CAST scale decayed toward 0 would shrink its weights). ZeRO-3 params keep their real
    shape in ``ds_shape``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in named]
    matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 and not n.endswith(("slorb_s", "slorb_x", "cast_scale"))
              for n, p in named]
    groups = [{"params": [p for p, mx in zip(trainable, matrix) if mx], "weight_decay": weight_decay},
              {"params": [p for p, mx in zip(trainable, matrix) if not mx], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # LoRA trains matrices only; ZeRO drops empty groups


@torch.no_grad()
def domain_eval_losses(engine, corpus: Corpus, *, domains: list[str], micro_batch: int,
                       max_batches: int) -> dict[str, float]:
    """Mean next-token loss per domain on its eval split, the same all-reduced numbers on every rank.
    Every rank runs the same number of forwards (ZeRO-3 gathers parameters inside forward)."""
    import torch.nn.functional as F

    from ast_ds.data.domain_weights import measure_domain_losses

    def row_losses(batch):
        ids = batch["input_ids"].to(engine.device)
        logits = engine(input_ids=ids, use_cache=False).logits
        # one row at a time: the fp32 upcast of the logits stays [T, V]
        if "loss_mask" not in batch:
            return torch.stack([F.cross_entropy(logits[i, :-1].float(), ids[i, 1:]) for i in range(len(ids))])
        # instruction data: response tokens only (a row without any gives NaN, left out of the domain's mean)
        labels = labels_of(batch).to(engine.device)
        return torch.stack([F.cross_entropy(logits[i].float(), labels[i]) for i in range(len(ids))])

    was_training = engine.training
    engine.eval()
    out = measure_domain_losses(row_losses, corpus, domains=domains, micro_batch=micro_batch,
                                max_batches=max_batches)
    if was_training:
        engine.train()
    return out


# ---------------------------------------------------------------------------------------------------- phases
def _setup(cfg: TrainConfig, ds_config_path: str):
    """Process group, logging, validated config, the sparse-training component, and the resolved
    DeepSpeed config (checked by that component, then saved with ours)."""
    import deepspeed

    from ast_ds.sparse_training import build_sparse_training

    from ast_ds.ds_config import load_ds_config, resolve_ds_config
    from ast_ds.model import hidden_size

    # mosaicml-streaming finds the ranks of a node from LOCAL_WORLD_SIZE, which torchrun sets and the
    # deepspeed launcher does not (it sets LOCAL_SIZE); without it every rank believes it leads its node
    # and they collide on the node's shared memory.
    if "LOCAL_WORLD_SIZE" not in os.environ and "LOCAL_SIZE" in os.environ:
        os.environ["LOCAL_WORLD_SIZE"] = os.environ["LOCAL_SIZE"]
    deepspeed.init_distributed()
    rank, world = collectives.rank_world()
    setup_logging(rank)
    cfg.validate(world)
    sparse = build_sparse_training(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ds_cfg = resolve_ds_config(load_ds_config(ds_config_path), micro_batch=cfg.micro_batch,
                               grad_accum=cfg.grad_accum(world), world_size=world, grad_clip=cfg.optim.grad_clip,
                               precision=cfg.precision, hidden_size=hidden_size(cfg.model.path), source=ds_config_path)
    sparse.check_ds_config(ds_cfg, ds_config_path)
    if rank == 0:
        save_resolved(cfg, ds_cfg, os.path.join(cfg.out_dir, "config.json"))
    torch.manual_seed(cfg.seed)
    return ds_cfg, sparse


def _build_data(cfg: TrainConfig, corpus: Corpus):
    """The domain weights' owner (constant, or Sheared-LLaMA dynamic) and the loader that reads them."""
    from ast_ds.data.domain_weights import DomainWeightUpdater
    from ast_ds.data.loader import MultiDomainLoader

    domains = cfg.data.domains or corpus.domains
    updater = DomainWeightUpdater(mode=cfg.data.weights_mode, domains=domains,
                                  weights=cfg.data.weights or {d: corpus.rows(d, "train") for d in domains},
                                  eta=cfg.data.eta, smoothing=cfg.data.smoothing, update_every=cfg.data.update_every)
    loader = MultiDomainLoader(corpus, domains=domains, split="train", micro_batch=cfg.micro_batch,
                               global_batch=cfg.global_batch, weights=updater, seed=cfg.seed)
    return updater, loader


def _build_student(cfg: TrainConfig, ds_cfg: dict, sparse, corpus: Corpus, dtype: torch.dtype):
    """The student, partitioned at construction under ZeRO-3, wrapped by DeepSpeed with the optimizer
    the sparse-training component chose; the initial masks bound. Returns (engine, lr schedule, vocab)."""
    import deepspeed

    from ast_ds.checkpoint.export import write_hf_meta
    from ast_ds.model import load_causal_lm, vocab_size
    from ast_ds.optim.lr import lr_factor

    from ast_ds.conv1d import conv1d_to_linear

    student = load_causal_lm(cfg.model.path, ds_config=ds_cfg, dtype=dtype, dropout=cfg.model.dropout)
    conv1d = conv1d_to_linear(student)  # GPT-2: Conv1D [in, out] -> nn.Linear [out, in]; back at export
    vocab = vocab_size(student)  # the corpus fits it: checked by preflight on every rank
    if collectives.is_rank_zero():
        write_hf_meta(cfg.out_dir, student.config, model_path=cfg.model.path, corpus=corpus, conv1d=conv1d)
    sparse.prepare_model(student)
    if cfg.activation_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = sparse.make_optimizer(_param_groups(student, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                      betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                      weight_decay=cfg.optim.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup=cfg.optim.warmup_steps, total=cfg.total_steps, min_ratio=cfg.optim.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, lr_scheduler=schedule, config=ds_cfg)
    sparse.bind(engine)
    return engine, schedule, vocab


def _attach_ref_losses(cfg: TrainConfig, updater, measure_reference) -> None:
    """Dynamic domain weights compare eval losses with per-domain references: given, or measured once by
    ``measure_reference`` (the teacher's, or in mode dense the starting model's) and cached in the run folder."""
    from ast_ds.data.domain_weights import load_or_measure_ref_losses

    if cfg.data.weights_mode != "dynamic":
        return
    if measure_reference is None and not cfg.data.ref_losses:
        raise ValueError("data.weights_mode=dynamic without a teacher (distill.alpha 0, or mode lora) needs "
                         "data.ref_losses (per-domain targets) or --data.weights_mode constant")
    updater.set_ref_losses(load_or_measure_ref_losses(
        given=cfg.data.ref_losses or None, cache_path=os.path.join(cfg.out_dir, "ref_losses.json"),
        domains=updater.domains, measure=measure_reference, write=collectives.is_rank_zero()))


# ---------------------------------------------------------------------------------------------------- the story
@dataclass
class Run:
    """Everything ``train`` builds before the loop (phases 1-7): the engine, the components, their
    checkpoint manager and the loop over them."""

    engine: object
    counters: TrainCounters
    checkpoints: object  # CheckpointManager
    loop: "_Loop"
    memory: MemoryMeter


def build(cfg: TrainConfig, *, ds_config_path: str) -> Run:
    """Phases 1-7 on every rank: set-up, data, sparsity, student, teacher, reference losses, checkpoints."""
    from ast_ds.checkpoint.manager import CheckpointManager, RNGState
    from ast_ds.teacher import build_teacher

    memory = MemoryMeter()
    ds_cfg, sparse = _setup(cfg, ds_config_path)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    corpus = Corpus(cfg.data.data_dir, remote=cfg.data.remote or None)
    preflight(cfg, corpus)  # every rank checks the inputs; the ranks agree before the first collective
    updater, loader = _build_data(cfg, corpus)
    memory.set_floor()  # CPU: what the process holds before any model exists
    engine, schedule, vocab = _build_student(cfg, ds_cfg, sparse, corpus, dtype)
    teacher = build_teacher(cfg, ds_cfg, dtype=dtype)

    def evaluate(model_engine):
        return domain_eval_losses(model_engine, corpus, domains=loader.domains, micro_batch=cfg.micro_batch,
                                  max_batches=cfg.eval_batches)

    # the references of dynamic domain weights: the teacher's losses; a dense retraining's are its own start's
    reference = teacher.engine if teacher.engine is not None else engine if cfg.mode == "dense" else None
    _attach_ref_losses(cfg, updater, None if reference is None else lambda: evaluate(reference))
    counters = TrainCounters()
    meta = dict(sparse.meta, **{META_MODEL: model_fingerprint(cfg.model.path)})
    checkpoints = CheckpointManager(cfg.out_dir, engine=engine, meta=meta, keep_last=cfg.keep_last,
                                    shared={TRAINER: counters, DOMAIN_WEIGHTS: updater, **sparse.shared_components()},
                                    per_rank={SPARSITY: sparse, LOADER: loader, RNG: RNGState()})
    loop = _Loop(cfg, engine=engine, schedule=schedule, loader=loader, teacher=teacher, sparse=sparse,
                 updater=updater, counters=counters, evaluate=lambda: evaluate(engine), vocab=vocab)
    return Run(engine, counters, checkpoints, loop, memory)


def train(cfg: TrainConfig, *, ds_config_path: str, resume: str | None = None, stop_at: int | None = None) -> dict:
    """Train per ``cfg``; ``stop_at`` ends the run early after a checkpoint at that step (the schedule
    stays that of ``cfg.total_steps``), as a preempted or time-limited job would."""
    run = build(cfg, ds_config_path=ds_config_path)
    counters, checkpoints = run.counters, run.checkpoints
    restored = checkpoints.resume(resume)  # the same or another number of ranks
    if restored:
        log.info("resumed from %s at step %d", restored, counters.step)

    def save():  # never a checkpoint with a non-finite weight: the last good one stays the newest
        if not collectives.agree(weights_finite(run.engine)):
            raise NonFiniteError(f"step {counters.step}: a weight is not finite, so no checkpoint was written; the "
                                 f"last good checkpoint is {checkpoints.last_good() or 'none'}")
        checkpoints.save(counters.step)

    run.memory.reset_peak()
    ended = run.loop.run(stop_at=stop_at, save=save, last_good=checkpoints.last_good, memory=run.memory)
    _report_memory(cfg, run.loop.train_peak, cuda=run.memory.cuda)
    final = os.path.join(checkpoints_dir(cfg.out_dir), tag_name(counters.step))
    if ended.startswith("preempted"):
        log.info("%s at step %d: checkpoint %s is complete; resume with --resume auto (same command)", ended,
                 counters.step, final)
    else:
        log.info("done: %d steps, %d tokens; checkpoint %s", counters.step, counters.tokens, final)
    return {"step": counters.step, "tokens": counters.tokens, "checkpoint": final, "ended": ended}


def _report_memory(cfg: TrainConfig, peak: int | None, *, cuda: bool) -> None:
    """Collective: the peak memory of the training steps (before the final save) over the ranks, logged
    and written to ``memory.json`` in the run folder (what ``launchers/plan.py`` predicts)."""
    high, low = (collectives.all_reduce_floats([-1.0 if peak is None else float(peak)], op)[0] for op in ("max", "min"))
    if high < 0 or not collectives.is_rank_zero():
        return
    what = "torch.cuda.max_memory_allocated" if cuda else "peak resident memory above the interpreter's own"
    log.info("peak memory of the training steps: %.3f GB on the busiest rank, %.3f GB on the least busy (%s)",
             high / 1e9, low / 1e9, what)
    from ast_ds.atomic import write_json_atomic

    write_json_atomic(os.path.join(cfg.out_dir, "memory.json"),
                      {"peak_bytes_max_rank": int(high), "peak_bytes_min_rank": int(low), "measure": what,
                       "world_size": collectives.rank_world()[1]})


class _Loop:
    """Steps, metrics, evaluation, domain-weight updates and saves; every component built by ``train``."""

    def __init__(self, cfg: TrainConfig, *, engine, schedule, loader, teacher, sparse, updater, counters, evaluate,
                 vocab: int):
        self.cfg, self.engine, self.schedule, self.loader = cfg, engine, schedule, loader
        self.teacher, self.sparse, self.updater, self.counters = teacher, sparse, updater, counters
        self.evaluate, self.vocab = evaluate, vocab
        self.rank, self.world = collectives.rank_world()
        self.grad_accum = cfg.grad_accum(self.world)
        self.nonfinite, self.faults = NonFiniteGuard(cfg.max_nonfinite_steps), Faults()

    def run(self, *, stop_at: int | None, save, last_good, memory: MemoryMeter | None = None) -> str:
        """Train to the end, to ``stop_at``, or to an agreed preemption; save; return how it ended."""
        cfg, c = self.cfg, self.counters
        # opened here, after any resume: rows past the restored step (from a run cut short) are dropped
        self.metrics = MetricsLogger(cfg.out_dir, enabled=self.rank == 0, resume_step=c.step)
        log.info("training %s: %d steps, %d ranks x micro batch %d x %d accumulation, seq %d, %s", cfg.mode,
                 cfg.total_steps, self.world, cfg.micro_batch, self.grad_accum, self.loader.seq_len, cfg.precision)
        self.engine.train()
        self.window_start, self.window_tokens = time.perf_counter(), 0
        ended = "done"
        with PreemptionGuard(cfg.preempt_signals) as preemption:
            while c.step < cfg.total_steps:
                skipped_before = self.engine.skipped_steps
                sums, losses, domains = self.train_step()
                self.faults.after_step(c.step + 1, self.rank)
                c.step += 1
                c.tokens += cfg.global_batch * self.loader.seq_len
                norm = self.engine.get_global_grad_norm()
                bad, preempted = agree_step(bad=NonFiniteGuard.local_bad(
                    losses, grad_norm=norm, engine_skipped=self.engine.skipped_steps > skipped_before),
                    preempted=preemption.received is not None)
                self.nonfinite.record(c.step, bad, last_good=last_good, detail=lambda: (
                    f"loss {losses} and grad norm {norm} on rank {self.rank}, domains {domains}"))
                self.after_step(sums, skipped=bad)
                if preempted:
                    ended = f"preempted ({preemption.received or 'signal on another rank'})"
                    break
                if stop_at is not None and c.step >= stop_at:
                    ended = "stopped (--stop_at)"
                    break
                if cfg.save_every and c.step % cfg.save_every == 0 and c.step < cfg.total_steps:
                    save()
            self.train_peak = memory.peak_bytes() if memory is not None else None  # before the final save
            save()
        if self.rank == 0:
            self.metrics.plot(os.path.join(cfg.out_dir, "curves.png"))
            self.updater.plot(os.path.join(cfg.out_dir, "domain_weights.png"))
        self.metrics.close()
        return ended

    def next_ids(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next micro-batch's token ids (checked against the vocabulary), labels (instruction data: the
        response tokens only) and domains. A failure on one rank (an unreadable shard, a bad token id) stops
        every rank before the forward's collectives."""
        error, ids, labels, domains = None, None, None, None
        try:
            self.faults.data_error(step, self.rank)
            batch = self.loader.next_batch()
            ids, domains = batch["input_ids"].to(self.engine.device), batch["domain"]
            labels = labels_of(batch).to(self.engine.device)
            if int(ids.max()) >= self.vocab:
                raise ValueError(f"token id {int(ids.max())} >= model vocabulary {self.vocab} in "
                                 f"{self.cfg.data.data_dir}")
        except Exception as e:  # noqa: BLE001 - agreed below, then raised on every rank
            error = e
        collectives.raise_if_any(error, what=f"reading the batch of step {step}")
        return ids, labels, domains

    def train_step(self) -> tuple[torch.Tensor, list[float], list[str]]:
        """One optimizer step over ``grad_accum`` micro-batches: the summed (loss, KL, CE) of this rank,
        each micro-batch's loss, and the domains read."""
        cfg, step = self.cfg, self.counters.step + 1
        sums, losses, domains = torch.zeros(3, dtype=torch.float64), [], []
        for _ in range(self.grad_accum):
            ids, labels, batch_domains = self.next_ids(step)
            logits = self.engine(input_ids=ids, use_cache=False).logits
            loss, kl, ce = distill_loss(logits, self.teacher.logits(ids), labels, alpha=self.teacher.alpha,
                                        temperature=cfg.distill.temperature, chunk_tokens=cfg.distill.chunk_tokens)
            if self.faults.nan_loss(step, self.rank):
                loss = loss * float("nan")
            self.engine.backward(loss)
            self.engine.step()
            sums += torch.tensor([loss.item(), kl.item(), ce.item()], dtype=torch.float64)
            losses.append(loss.item())
            domains += sorted({self.loader.domains[d] for d in batch_domains.tolist()} - set(domains))
            self.window_tokens += ids.numel() * self.world
        return sums, losses, domains

    def after_step(self, sums: torch.Tensor, *, skipped: bool) -> None:
        """Flip rates, per-domain eval and domain-weight updates when due; the log line. Collective."""
        cfg, step = self.cfg, self.counters.step
        row = dict(self.sparse.step_metrics(step))
        if skipped:
            row["skipped_nonfinite"] = 1
        if cfg.data.weights_mode == "dynamic" and step % cfg.data.update_every == 0 or \
                cfg.eval_every and step % cfg.eval_every == 0:
            losses = self.evaluate()
            row.update({f"eval_loss/{d}": v for d, v in losses.items()})
            if self.updater.due(step):
                self.updater.update(step, losses)
                row.update({f"weight/{d}": w for d, w in self.updater.weights.items()})
        if step % cfg.log_every == 0 or step == cfg.total_steps or row:
            loss, kl, ce = collectives.all_reduce_floats((sums / self.grad_accum).tolist(), "mean")
            elapsed = time.perf_counter() - self.window_start
            row.update(loss=loss, kl=kl if self.teacher.alpha > 0 else None, ce=ce,
                       lr=self.schedule.get_last_lr()[0], tokens=self.counters.tokens,
                       tokens_per_s=self.window_tokens / elapsed if elapsed > 0 else 0.0)
            row.update(self.sparse.log_metrics(step))
            self.metrics.log(step, row)
            shown = {k: v for k, v in row.items() if isinstance(v, float)}
            log.info("step %d/%d  " % (step, cfg.total_steps) + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()))
            self.window_start, self.window_tokens = time.perf_counter(), 0


__all__ = ["train", "domain_eval_losses", "TrainCounters", "CheckpointError", "NonFiniteError"]

"""The training story, top to bottom: data -> student (ZeRO-3) -> optimizer that owns the sparsity ->
teacher -> domain weights -> resume -> loop (KD loss, step, metrics, eval, dynamic weights, checkpoints).

Launched by ``deepspeed launchers/train.py --ds_config ds_configs/zero3.json --recipe llama2_7b ...``.
Every collective (all-reduce of metrics, flip rates, evals, checkpoint saves) runs on every rank;
only logging and file writes of shared files are rank-0.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

from ast_ds.checkpoint import Checkpointer, CheckpointError, find_checkpoint
from ast_ds.config import TrainConfig, save_resolved
from ast_ds.distill import distill_loss, shift_labels
from ast_ds.ds_config import load_ds_config, resolve_ds_config, teacher_ds_config
from ast_ds.metrics import MetricsLogger, log, setup_logging
from ast_ds.model import hidden_size, load_causal_lm, sparse_target_names, vocab_size
from ast_ds.optim.ast_adamw import ASTAdamW
from ast_ds.optim.lr import lr_factor
from ast_ds.sparsity import DecaySchedule, parse_nm


def _param_groups(model, weight_decay: float):
    """Decoupled weight decay on the model's matrices only: not on norms, biases, or the converters'
    parameters (a CAST scale decayed toward 0 would shrink its weights). ZeRO-3 params keep their real
    shape in ``ds_shape``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in named]
    matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 and not n.endswith(("slorb_s", "slorb_x", "cast_scale"))
              for n, p in named]
    return [{"params": [p for p, mx in zip(trainable, matrix) if mx], "weight_decay": weight_decay},
            {"params": [p for p, mx in zip(trainable, matrix) if not mx], "weight_decay": 0.0}]


def _mean_over_ranks(values: list[float], device) -> list[float]:  # collective
    """On the engine's device: NCCL refuses CPU tensors."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).cpu().tolist()


@torch.no_grad()
def domain_eval_losses(engine, *, data_dir: str, domains: list[str], micro_batch: int, max_batches: int,
                       device, remote: str | None = None) -> dict[str, float]:
    """Mean next-token loss per domain on its eval split, the same all-reduced numbers on every rank.
    Every rank runs the same number of forwards (ZeRO-3 gathers parameters inside forward)."""
    import torch.nn.functional as F

    from ast_ds.data.domain_weights import measure_domain_losses

    def row_losses(batch):
        ids = batch["input_ids"].to(device)
        logits = engine(input_ids=ids, use_cache=False).logits
        # one row at a time: the fp32 upcast of the logits stays [T, V]
        return torch.stack([F.cross_entropy(logits[i, :-1].float(), ids[i, 1:]) for i in range(len(ids))])

    was_training = engine.training
    engine.eval()
    out = measure_domain_losses(row_losses, data_dir=data_dir, domains=domains, micro_batch=micro_batch,
                                max_batches=max_batches, rank=dist.get_rank(), world_size=dist.get_world_size(),
                                remote=remote)
    if was_training:
        engine.train()
    return out


def _export_meta(run_dir: str, model_config, *, model_path: str, data_dir: str) -> None:
    """Rank 0: the HF config and tokenizer consolidation needs, in ``run/hf_meta``."""
    from ast_ds.data.tokenizer import load_tokenizer
    from ast_ds.export import copy_tokenizer

    meta = os.path.join(run_dir, "hf_meta")
    os.makedirs(meta, exist_ok=True)
    model_config.save_pretrained(meta)
    if not copy_tokenizer(model_path, meta):  # no tokenizer beside the model: the one the data was made with
        with open(os.path.join(data_dir, "manifest.json")) as f:
            load_tokenizer(json.load(f)["tokenizer"]["path"]).save_to(meta)


def train(cfg: TrainConfig, *, ds_config_path: str, resume: str | None = None, stop_at: int | None = None) -> dict:
    """Train per ``cfg``; ``stop_at`` ends the run early after a checkpoint at that step (the schedule
    stays that of ``cfg.total_steps``), as a preempted or time-limited job would."""
    import deepspeed

    # ---- distributed set-up and config -----------------------------------------------------------
    # mosaicml-streaming finds the ranks of a node from LOCAL_WORLD_SIZE, which torchrun sets and the
    # deepspeed launcher does not (it sets LOCAL_SIZE); without it every rank believes it leads its node
    # and they collide on the node's shared memory.
    if "LOCAL_WORLD_SIZE" not in os.environ and "LOCAL_SIZE" in os.environ:
        os.environ["LOCAL_WORLD_SIZE"] = os.environ["LOCAL_SIZE"]
    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    setup_logging(rank)
    cfg.validate(world)
    run_dir = cfg.out_dir
    os.makedirs(run_dir, exist_ok=True)
    grad_accum = cfg.grad_accum(world)
    ds_cfg = resolve_ds_config(load_ds_config(ds_config_path), micro_batch=cfg.micro_batch, grad_accum=grad_accum,
                               world_size=world, grad_clip=cfg.optim.grad_clip, precision=cfg.precision,
                               hidden_size=hidden_size(cfg.model.path), source=ds_config_path)
    sparse = cfg.mode == "ast"
    if sparse and ds_cfg["zero_optimization"].get("stage") != 3:
        raise ValueError(f"{ds_config_path}: mode=ast needs ZeRO stage 3 (ds_configs/zero3.json or "
                         f"zero3_offload.json); stage 2 is for --mode dense")
    if rank == 0:
        save_resolved(cfg, ds_cfg, os.path.join(run_dir, "config.json"))
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    # ---- data: one streaming dataset per domain, mixed by domain weights -------------------------
    from ast_ds.data.loader import MultiDomainLoader

    loader = MultiDomainLoader(data_dir=cfg.data.data_dir, domains=cfg.data.domains or None, split="train",
                               micro_batch=cfg.micro_batch, weights=cfg.data.weights or None, seed=cfg.seed,
                               rank=rank, world_size=world, remote=cfg.data.remote or None)

    # ---- student, partitioned at construction under ZeRO-3 ---------------------------------------
    student = load_causal_lm(cfg.model.path, ds_config=ds_cfg, dtype=dtype)
    vocab = vocab_size(student)
    if loader.vocab_size > vocab:
        raise ValueError(f"data {cfg.data.data_dir} was tokenized with a vocabulary of {loader.vocab_size} but the "
                         f"model has {vocab} embeddings; prepare the data with the model's tokenizer")
    if rank == 0:
        _export_meta(run_dir, student.config, model_path=cfg.model.path, data_dir=cfg.data.data_dir)

    # ---- optimizer: ASTAdamW owns the N:M masks and the annealed SR-STE decay ---------------------
    opt_args = dict(lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                    weight_decay=cfg.optim.weight_decay)
    masks = decay = None
    if sparse:
        from ast_ds.converters import add_slorb, add_weight_scaling
        from ast_ds.zero import ShardedMasks

        sp = cfg.sparsity
        n, m = parse_nm(sp.pattern)
        targets = sparse_target_names(student, sp.targets)
        # converters add parameters before DeepSpeed wraps the model, so ZeRO-3 partitions them too
        if sp.slorb_k:
            add_slorb(student, targets, k=sp.slorb_k, n=n, m=m)
        if sp.scaling_groups:
            add_weight_scaling(student, targets, groups=sp.scaling_groups)
        groups = _param_groups(student, cfg.optim.weight_decay)
        masks = ShardedMasks(targets, n=n, m=m, track_initial=sp.track_initial, mask_forward=sp.method == "ast")
        if sp.method == "cast":  # AdamS: constant λ, mixed in with α_t = t / T
            decay = DecaySchedule(sp.lam_max, cfg.total_steps, t0=0)
        else:
            decay = DecaySchedule(sp.lam_max, cfg.total_steps, t0=round(sp.ramp_fraction * cfg.total_steps))
        optimizer = ASTAdamW(groups, masks=masks, decay=decay, mask_interval=sp.mask_interval,
                             rule="adams" if sp.method == "cast" else "ast", total_steps=cfg.total_steps, **opt_args)
    else:
        optimizer = torch.optim.AdamW(_param_groups(student, cfg.optim.weight_decay), foreach=False, **opt_args)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup=cfg.optim.warmup_steps, total=cfg.total_steps, min_ratio=cfg.optim.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, lr_scheduler=schedule, config=ds_cfg)
    device = engine.device
    if masks is not None:  # initial masks (from W0, or a one-shot method); the forward now sees W ⊙ m
        initial = None
        if cfg.sparsity.init_mask:
            from ast_ds.oneshot import masks_of_pruned_folder

            initial = masks_of_pruned_folder(cfg.sparsity.init_mask, masks.target_names, n=n, m=m)
        masks.bind(engine, initial_keep=initial)

    # ---- teacher: the frozen dense model, an optimizer-less ZeRO-3 engine -------------------------
    teacher = None
    if sparse and cfg.distill.alpha > 0:
        t_cfg = teacher_ds_config(ds_cfg)
        t_model = load_causal_lm(cfg.teacher_path, ds_config=t_cfg, dtype=dtype, what="model.teacher_path")
        if vocab_size(t_model) != vocab:
            raise ValueError(f"teacher vocabulary {vocab_size(t_model)} != student vocabulary {vocab}")
        t_model.requires_grad_(False)
        teacher, *_ = deepspeed.initialize(model=t_model, config=t_cfg)
        teacher.eval()
    alpha = cfg.distill.alpha if teacher is not None else 0.0

    # ---- domain weights (constant, or Sheared-LLaMA dynamic batch loading) -----------------------
    from ast_ds.data.domain_weights import DomainWeightUpdater, load_or_measure_ref_losses

    eval_args = dict(data_dir=cfg.data.data_dir, domains=loader.domains, micro_batch=cfg.micro_batch,
                     max_batches=cfg.eval_batches, device=device, remote=cfg.data.remote or None)
    ref_losses = None
    if cfg.data.weights_mode == "dynamic":
        if teacher is None and not cfg.data.ref_losses:
            raise ValueError("data.weights_mode=dynamic without a teacher needs data.ref_losses (per-domain targets)")
        ref_losses = load_or_measure_ref_losses(
            given=cfg.data.ref_losses or None, cache_path=os.path.join(run_dir, "ref_losses.json"),
            domains=loader.domains, measure=lambda: domain_eval_losses(teacher, **eval_args), write=rank == 0)
    updater = DomainWeightUpdater(mode=cfg.data.weights_mode, domains=loader.domains, weights=loader.weights,
                                  ref_losses=ref_losses, eta=cfg.data.eta, smoothing=cfg.data.smoothing,
                                  update_every=cfg.data.update_every)

    # ---- resume -----------------------------------------------------------------------------------
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep_last=cfg.keep_last)
    meta = {"mode": cfg.mode, "pattern": cfg.sparsity.pattern if sparse else None,
            "method": cfg.sparsity.method if sparse else None, "slorb_k": cfg.sparsity.slorb_k if sparse else 0,
            "scaling_groups": cfg.sparsity.scaling_groups if sparse else 0}
    step, tokens = 0, 0
    if resume:
        tag_dir = find_checkpoint(ckpt.root, resume)
        if tag_dir is None:
            log.info("resume auto: no complete checkpoint in %s, starting from step 0", ckpt.root)
        else:
            client_state, rank_state = Checkpointer.load(engine, tag_dir, expect_meta=meta)
            if masks is not None:
                masks.load_state_dict(rank_state["sparsity"])
                masks.write_working_weights()  # load_checkpoint refreshed the working weights densely
            loader.load_state_dict(rank_state["loader"])
            updater.load_state_dict(client_state["domain_weights"])  # the loader's state holds its own weights
            torch.set_rng_state(rank_state["rng"])
            if rank_state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(rank_state["cuda_rng"])
            step, tokens = client_state["trainer"]["step"], client_state["trainer"]["tokens"]
            log.info("resumed from %s at step %d", tag_dir, step)

    def save():
        ckpt.save(engine, step=step, meta=meta,
                  client_state={"trainer": {"step": step, "tokens": tokens},
                                "domain_weights": updater.state_dict()},
                  rank_state={"loader": loader.state_dict(), "rng": torch.get_rng_state(),
                              "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                              "sparsity": masks.state_dict() if masks is not None else None})

    # ---- the loop ---------------------------------------------------------------------------------
    metrics = MetricsLogger(run_dir, enabled=rank == 0, resume_step=step)
    log.info("training %s: %d steps, %d ranks x micro batch %d x %d accumulation, seq %d, %s",
             cfg.mode, cfg.total_steps, world, cfg.micro_batch, grad_accum, loader.seq_len, cfg.precision)
    engine.train()
    window_start, window_tokens = time.perf_counter(), 0
    while step < cfg.total_steps:
        sums = torch.zeros(3, dtype=torch.float64)
        for _ in range(grad_accum):
            ids = loader.next_batch()["input_ids"].to(device)
            if int(ids.max()) >= vocab:
                raise ValueError(f"token id {int(ids.max())} >= model vocabulary {vocab} in {cfg.data.data_dir}")
            logits = engine(input_ids=ids, use_cache=False).logits
            t_logits = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=ids, use_cache=False).logits
            loss, kl, ce = distill_loss(logits, t_logits, shift_labels(ids), alpha=alpha,
                                        temperature=cfg.distill.temperature, chunk_tokens=cfg.distill.chunk_tokens)
            engine.backward(loss)
            engine.step()
            sums += torch.tensor([loss.item(), kl.item(), ce.item()], dtype=torch.float64)
            window_tokens += ids.numel() * world
        step += 1
        tokens += cfg.global_batch * loader.seq_len
        row = {}
        if masks is not None and cfg.sparsity.mask_interval and step % cfg.sparsity.mask_interval == 0:
            row.update(masks.flip_rates())
        if cfg.data.weights_mode == "dynamic" and step % cfg.data.update_every == 0 or \
                cfg.eval_every and step % cfg.eval_every == 0:
            losses = domain_eval_losses(engine, **eval_args)
            row.update({f"eval_loss/{d}": v for d, v in losses.items()})
            if updater.due(step):
                loader.set_weights(updater.update(step, losses))
                row.update({f"weight/{d}": w for d, w in updater.weights.items()})
        if step % cfg.log_every == 0 or step == cfg.total_steps or row:
            loss, kl, ce = _mean_over_ranks((sums / grad_accum).tolist(), device)
            elapsed = time.perf_counter() - window_start
            row.update(loss=loss, kl=kl if alpha > 0 else None, ce=ce, lr=schedule.get_last_lr()[0],
                       tokens=tokens, tokens_per_s=window_tokens / elapsed if elapsed > 0 else 0.0)
            if masks is not None:
                row.update({"lambda": decay(step), "sparsity": masks.measured_sparsity()})
            metrics.log(step, row)
            shown = {k: v for k, v in row.items() if isinstance(v, float)}
            log.info("step %d/%d  " % (step, cfg.total_steps) + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()))
            window_start, window_tokens = time.perf_counter(), 0
        if stop_at is not None and step >= stop_at:
            break
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.total_steps:
            save()
    save()
    if rank == 0:
        metrics.plot(os.path.join(run_dir, "curves.png"))
        updater.plot(os.path.join(run_dir, "domain_weights.png"))
    metrics.close()
    final = os.path.join(ckpt.root, f"step_{step:08d}")
    log.info("done: %d steps, %d tokens; checkpoint %s", step, tokens, final)
    return {"step": step, "tokens": tokens, "checkpoint": final}


__all__ = ["train", "domain_eval_losses", "CheckpointError"]

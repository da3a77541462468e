"""The typed training configuration: one tree of dataclasses, validated at start.

Sources, later wins: a named recipe (``ast_ds.recipes``), a YAML/JSON file, command-line overrides of
any field (``--optim.lr 1e-4``, ``--sparsity.pattern 4:8``). The resolved config is written to the run
folder. Components take only their own section, never the whole tree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ast_ds.sparsity.nm_mask import parse_nm

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class ModelConfig:
    path: str = ""
    """Hugging Face folder of the dense model the student starts from."""
    teacher_path: str = ""
    """Folder of the frozen dense teacher (default: ``path``)."""
    dropout: float = 0.0
    """Dropout probability written into every dropout field of the student's config (OPT and GPT-2 ship 0.1;
    retraining runs without, as the paper does); -1 keeps the model config's own values."""


@dataclass(kw_only=True)
class SparsityConfig:
    pattern: str = "2:4"
    """N:M pattern; M must divide the input dimension of every target linear."""
    targets: list[str] = field(default_factory=list)
    """Module names (last component) of the linears inside the blocks that become N:M; empty = by the model's
    type (LLaMA/Mistral/Qwen: q/k/v/o_proj, gate/up/down_proj; OPT: q/k/v/out_proj, fc1, fc2), filled at start."""
    lam_max: float | str = 6e-5
    """Peak SR-STE decay λ_max, or "auto": steered during the run so the total flipped ratio (mask entries that
    differ from the initial mask) ends at flip_target (ast_ds/sparsity/flip_control.py)."""
    flip_target: float = 0.0
    """lam_max auto: the total flipped ratio to end at (0 = the paper's Table 8 value for the model's size)."""
    flip_band: float = 0.25
    """lam_max auto: the ratio counts as on target within ±this fraction of flip_target (reported)."""
    lam_init: float = 1e-3
    """lam_max auto: λ_max at the start, before the first mask refresh adjusts it (high: flips are hard to undo)."""
    ramp_fraction: float = 0.25
    """T0 / T1: λ ramps linearly over this fraction of training, then stays (0 = static SR-STE)."""
    mask_interval: int = 10
    """Δt: refresh the magnitude mask every this many optimizer steps (0 = fixed mask)."""
    track_initial: bool = True
    """Keep the initial mask (1 bit per local weight) to report the initial flip rate."""
    method: str = "ast"
    """ast (masked forward, annealed L2 SR-STE in AdamW) | cast (dense forward, AdamS L1 decay, hard prune
    at export)."""
    slorb_k: int = 0
    """SLoRB (AST-Boosted) group size k; 0 = off, the paper uses 16. Not pure N:M at inference."""
    scaling_groups: int = 0
    """CAST weight scaling: learnable scale per row and per this many column groups (0 = off, CAST uses 2)."""
    init_mask: str = ""
    """A one-shot-pruned Hugging Face folder whose N:M pattern is the initial mask (ablation)."""


@dataclass(kw_only=True)
class DistillConfig:
    alpha: float = 1 / 3
    """Weight of KL(teacher‖student); 1−alpha weighs cross-entropy. 0 disables the teacher."""
    temperature: float = 1.0
    """Softmax temperature of the KL term (its gradient is scaled by T², as usual)."""
    chunk_tokens: int = 256
    """Tokens per chunk of the loss: fp32 softmax temporaries exist only for this many rows (at V = 32000,
    256 rows are 33 MB each)."""


@dataclass(kw_only=True)
class LoRAConfig:
    rank: int = 16
    """Adapter rank r (the paper fine-tunes its 2:4 LLaMA-2 with r = 64)."""
    alpha: float = 32.0
    """LoRA alpha; the adapter's output is scaled by alpha / rank."""
    targets: list[str] = field(default_factory=list)
    """Module names (last component) of the linears that get adapters; empty = the model type's N:M targets."""
    masked: bool = True
    """true: forward (W + s·B·A) ⊙ m with the model's own N:M mask m = (W != 0), so the merge is exactly N:M;
    false: plain LoRA, its merge re-pruned to N:M by magnitude at export (for comparison)."""


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 2e-5
    """Peak learning rate (after the linear warmup)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam's β1, β2."""
    eps: float = 1e-8
    """Adam's ε."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay on the matrices; not on norms, biases or converter parameters."""
    warmup_steps: int = 500
    """Linear warmup steps, then cosine decay."""
    min_lr_ratio: float = 0.1
    """Cosine decays the learning rate to lr * min_lr_ratio at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""


@dataclass(kw_only=True)
class DataConfig:
    data_dir: str = ""
    """Output folder of data_prep/prepare.py (its manifest + <domain>/{train,eval} MDS shards)."""
    remote: str = ""
    """Optional remote root (s3://, gs://, ...) with the same layout; data_dir is then the local cache."""
    domains: list[str] = field(default_factory=list)
    """Domains to train on (default: every domain in the manifest)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Initial domain weights (default: proportional to each domain's train rows)."""
    weights_mode: str = "constant"
    """constant | dynamic (Sheared-LLaMA dynamic batch loading)."""
    update_every: int = 100
    """K: dynamic weights (and per-domain eval losses) every K steps."""
    eta: float = 1.0
    """Step size η of the dynamic weight update."""
    smoothing: float = 1e-4
    """Uniform mixing c of the dynamic weight update (Sheared-LLaMA)."""
    ref_losses: dict[str, float] = field(default_factory=dict)
    """Per-domain reference losses (default: measured once from the teacher, in mode dense from the starting model,
    and cached in the run folder)."""


@dataclass(kw_only=True)
class TrainConfig:
    mode: str = "ast"
    """ast (N:M sparse retraining with the teacher) | dense (no sparsity, no teacher) | lora (adapters on a frozen
    N:M model that keep its pattern: launchers/finetune.py)."""
    out_dir: str = "runs/default"
    """Run folder: resolved config, metrics, plots, hf_meta and checkpoints/."""
    total_steps: int = 15_000
    """Optimizer steps of the whole run (T1); the LR and decay schedules span them."""
    micro_batch: int = 4
    """Sequences per GPU per forward."""
    global_batch: int = 128
    """Sequences per optimizer step; gradient accumulation = global_batch / (micro_batch * world size)."""
    precision: str = "bf16"
    """bf16 | fp32 (fills ds_config's bf16.enabled when it is "auto")."""
    seed: int = 0
    """Seed of the model's RNG and the loader's domain/row order."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward (Hugging Face gradient checkpointing, non-
    reentrant): only the layers' inputs are kept, for about a third more compute. launchers/plan.py shows
    when a run needs it."""
    log_every: int = 10
    """Log the losses every this many steps."""
    eval_every: int = 500
    """Per-domain eval loss every this many steps (0 = never; dynamic weights use update_every)."""
    eval_batches: int = 8
    """Micro-batches per domain and rank for each evaluation."""
    save_every: int = 1000
    """Checkpoint every this many steps (0 = only at the end)."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted after a newer one is complete."""
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals that make every rank finish the current step, save a checkpoint and exit 0 (SLURM: #SBATCH
    --signal=USR1@300); resume with --resume auto."""
    max_nonfinite_steps: int = 3
    """Non-finite steps (NaN/inf loss or gradient norm, on any rank) are skipped; after this many in a row the
    run stops with an error naming the last good checkpoint."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)

    # ------------------------------------------------------------------ validation
    def validate(self, world_size: int = 1) -> "TrainConfig":
        """Raise ``ValueError`` naming the field and the fix; fill the defaults that depend on the model (the
        targets of its type, when none are named); return self."""

        def need(cond, name, msg):
            if not cond:
                raise ValueError(f"config field {name}: {msg}")

        need(self.mode in ("ast", "dense", "lora"), "mode", f"{self.mode!r} is not one of ast, dense, lora")
        if self.mode == "lora":
            need(self.lora.rank > 0 and self.lora.alpha > 0, "lora.rank/alpha", "must be > 0")
            need(self.distill.alpha == 0, "distill.alpha", "mode=lora trains with cross-entropy only; set --distill.alpha 0")
        need(self.precision in ("bf16", "fp32"), "precision", f"{self.precision!r} is not one of bf16, fp32")
        need(self.total_steps > 0, "total_steps", "must be > 0")
        need(self.micro_batch > 0, "micro_batch", "must be > 0")
        need(self.global_batch > 0, "global_batch", "must be > 0")
        need(self.global_batch % (self.micro_batch * world_size) == 0, "global_batch",
             f"{self.global_batch} is not a multiple of micro_batch ({self.micro_batch}) x world size ({world_size}); "
             f"set --global_batch to e.g. {self.micro_batch * world_size * max(1, self.global_batch // (self.micro_batch * world_size))}")
        need(bool(self.model.path), "model.path", "set --model.path to a Hugging Face model folder")
        need(self.model.dropout == -1 or 0 <= self.model.dropout < 1, "model.dropout",
             "must lie in [0, 1), or be -1 to keep the model config's own dropout")
        need(os.path.isdir(self.model.path), "model.path", f"{self.model.path!r} is not a folder")
        if self.model.teacher_path:
            need(os.path.isdir(self.model.teacher_path), "model.teacher_path", f"{self.model.teacher_path!r} is not a folder")
        if os.path.isfile(os.path.join(self.model.path, "config.json")):
            from ast_ds.model import default_targets

            self.sparsity.targets = self.sparsity.targets or default_targets(self.model.path)
            self.lora.targets = self.lora.targets or list(self.sparsity.targets)
        need(bool(self.data.data_dir), "data.data_dir", "set --data.data_dir to the output of data_prep/prepare.py")
        need(self.data.weights_mode in ("constant", "dynamic"), "data.weights_mode",
             f"{self.data.weights_mode!r} is not one of constant, dynamic")
        need(self.data.update_every > 0, "data.update_every", "must be > 0")
        need(all(w >= 0 for w in self.data.weights.values()), "data.weights", "weights must be >= 0")
        parse_nm(self.sparsity.pattern)  # raises with the expected form
        need(self.sparsity.lam_max == "auto" or isinstance(self.sparsity.lam_max, float) and self.sparsity.lam_max >= 0,
             "sparsity.lam_max", f"{self.sparsity.lam_max!r}: must be >= 0, or auto")
        if self.sparsity.lam_max == "auto":
            need(self.mode == "ast" and self.sparsity.method == "ast" and self.sparsity.mask_interval > 0
                 and self.sparsity.track_initial, "sparsity.lam_max",
                 "auto steers AST's decay from the mask refreshes: it needs mode ast, sparsity.method ast, "
                 "sparsity.mask_interval > 0 and sparsity.track_initial true")
            need(0 <= self.sparsity.flip_target < 1 and self.sparsity.flip_band > 0 and self.sparsity.lam_init > 0,
                 "sparsity.flip_target/flip_band/lam_init", "need 0 <= flip_target < 1, flip_band > 0, lam_init > 0")
        need(0 <= self.sparsity.ramp_fraction <= 1, "sparsity.ramp_fraction", "must lie in [0, 1] (0 = static SR-STE)")
        need(self.sparsity.mask_interval >= 0, "sparsity.mask_interval", "must be >= 0 (0 = fixed mask)")
        need(self.sparsity.method in ("ast", "cast"), "sparsity.method", f"{self.sparsity.method!r} is not ast or cast")
        need(self.sparsity.slorb_k >= 0 and self.sparsity.scaling_groups >= 0, "sparsity.slorb_k/scaling_groups",
             "must be >= 0 (0 = off)")
        need(not (self.sparsity.slorb_k and self.sparsity.scaling_groups), "sparsity.slorb_k/scaling_groups",
             "SLoRB (AST-Boosted) and CAST weight scaling cannot be combined; set one of them to 0")
        need(not (self.sparsity.init_mask and not os.path.isdir(self.sparsity.init_mask)), "sparsity.init_mask",
             f"{self.sparsity.init_mask!r} is not a folder (give a launchers/prune_oneshot.py output)")
        need(0 <= self.distill.alpha <= 1, "distill.alpha", "must lie in [0, 1]")
        need(self.distill.temperature > 0, "distill.temperature", "must be > 0")
        need(self.distill.chunk_tokens > 0, "distill.chunk_tokens", "must be > 0")
        need(self.optim.lr > 0, "optim.lr", "must be > 0")
        need(len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas), "optim.betas",
             "two values in [0, 1), e.g. [0.9, 0.95]")
        need(0 <= self.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must lie in [0, 1]")
        need(self.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        need(self.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = no clipping)")
        need(self.save_every >= 0 and self.keep_last >= 1, "save_every/keep_last",
             "save_every >= 0 (0 = only at the end), keep_last >= 1")
        need(self.log_every > 0, "log_every", "must be > 0")
        need(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be >= 1")
        from ast_ds.guards import signal_numbers

        signal_numbers(self.preempt_signals)  # raises naming the field
        return self

    def grad_accum(self, world_size: int) -> int:
        return self.global_batch // (self.micro_batch * world_size)

    @property
    def teacher_path(self) -> str:
        return self.model.teacher_path or self.model.path

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- building from sources
def _field_types(cls) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


def apply_overrides(cfg, values: dict[str, Any], *, source: str) -> None:
    """Set dotted keys (``optim.lr``) or nested dicts on ``cfg`` in place, checking names and types."""
    for key, value in values.items():
        obj, parts = cfg, key.split(".")
        for part in parts[:-1]:
            if not dataclasses.is_dataclass(obj) or part not in _field_types(type(obj)):
                raise ValueError(f"{source}: unknown config section {key!r}")
            obj = getattr(obj, part)
        name = parts[-1]
        fields = _field_types(type(obj)) if dataclasses.is_dataclass(obj) else {}
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ValueError(f"{source}: unknown config field {key!r} (fields here: {known})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {key} is a section; give a mapping")
            apply_overrides(current, value, source=f"{source}[{key}]")
            continue
        if name in AUTO_FIELDS and (value == "auto" or current == "auto"):  # a float, or the word auto
            value = "auto" if value == "auto" else _coerce(value, 0.0, key, source)
            setattr(obj, name, value)
            continue
        setattr(obj, name, _coerce(value, current, key, source))


AUTO_FIELDS = ("lam_max",)  # float fields that also take the word "auto"


def _coerce(value, current, key, source):
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            return str(value)
    elif isinstance(current, list):
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v for v in value.split(",") if v]
    elif isinstance(current, dict):
        if isinstance(value, dict):
            return value
    raise ValueError(f"{source}: {key}={value!r} has the wrong type; expected {type(current).__name__} "
                     f"(like {current!r})")


def load_file(path: str) -> dict:
    """A YAML or JSON config file as a (nested) dict."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping at the top level")
    return data


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (``field: T = x`` then a string literal), by name."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def add_override_arguments(parser, cls=TrainConfig, prefix: str = "") -> None:
    """One ``--section.field`` flag per config field (values parsed as YAML scalars/lists); its help is
    the field's docstring, its type and its default in the base config (recipes change some)."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            add_override_arguments(parser, type(default), prefix=name + ".")
            continue
        doc = docs.get(f.name, "")
        parser.add_argument(f"--{name}", dest=f"override:{name}", default=None, metavar="VALUE",
                            help=f"{doc}{' ' if doc else ''}({type(default).__name__}; base default "
                                 f"{default!r}, recipes may set another)".replace("%", "%%"))


def overrides_from_args(args) -> dict[str, Any]:
    import yaml

    out = {}
    for key, value in vars(args).items():
        if key.startswith("override:") and value is not None:
            parsed = yaml.safe_load(value)
            out[key[len("override:"):]] = value if parsed is None else parsed
    return out


def save_resolved(cfg: TrainConfig, ds_config: dict, path: str) -> None:
    """Write the resolved config (and DeepSpeed config) atomically."""
    from ast_ds.atomic import write_json_atomic

    write_json_atomic(path, {"train": cfg.to_dict(), "deepspeed": ds_config})

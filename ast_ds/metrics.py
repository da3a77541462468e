"""Rank-0 metrics: readable console lines, a CSV, TensorBoard when installed, and PNG curves."""

from __future__ import annotations

import csv
import logging
import os

from ast_ds.atomic import atomic_path

log = logging.getLogger("ast_ds")


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank{rank}] %(message)s", datefmt="%H:%M:%S")
    log.setLevel(level)


class MetricsLogger:
    """Only rank 0 writes; every method is a no-op elsewhere."""

    def __init__(self, run_dir: str, *, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.csv")
        self.rows: list[dict] = []
        self.tb = None
        if not enabled:
            return
        if os.path.isfile(self.path):  # keep rows up to the resume point, drop the replayed tail
            with open(self.path) as f:
                self.rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.tb = None

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: v for k, v in values.items() if v is not None}}
        self.rows.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with atomic_path(self.path, fsync=False) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self, path: str) -> None:
        """Loss parts, lr, λ (and λ_max with lam_max auto), flip rates (and the auto target path) and per-domain
        eval losses over steps."""
        if not self.enabled or not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            pts = [(float(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "")]
            return zip(*pts) if pts else ([], [])

        keys = set(k for r in self.rows for k in r)
        panels = [("loss", [k for k in ("loss", "kl", "ce") if k in keys]),
                  ("lr / λ", [k for k in ("lr", "lambda", "lam_max") if k in keys]),
                  ("mask flips", [k for k in ("flip_rate", "init_flip_rate", "flip_target") if k in keys]),
                  ("eval loss", sorted(k for k in keys if k.startswith("eval_loss/")))]
        panels = [p for p in panels if p[1]]
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
        for ax, (title, ks) in zip(axes[:, 0], panels):
            for k in ks:
                xs, ys = series(k)
                ax.plot(list(xs), list(ys), label=k)
            ax.set_title(title)
            ax.legend(fontsize=7)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

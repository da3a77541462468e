"""Run the training launcher so that SIGTERM/SIGUSR1 reach the ranks only and the job exits 0 after a
preemption save (see ``ast_ds/supervise.py`` for why DeepSpeed's launcher alone exits 1 or dies).

    python launchers/supervise.py -- deepspeed --num_gpus 8 launchers/train.py --ds_config ds_configs/zero3.json ...

Everything after ``--`` is the launcher command, unchanged. The exit code is the launcher's (0 when
every rank saved and exited 0).
"""

import argparse
import sys

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)


def main(argv=None):
    from ast_ds.supervise import DEFAULT_SIGNALS, supervise

    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        sys.exit("error: give the launcher command after `--`, e.g. "
                 "`python launchers/supervise.py -- deepspeed --num_gpus 8 launchers/train.py ...`")
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signals", default=",".join(DEFAULT_SIGNALS),
                   help="comma-separated signals forwarded to the ranks (match train.py's --preempt_signals)")
    args = p.parse_args(argv[:split])
    import signal

    names = tuple(s.strip() for s in args.signals.split(",") if s.strip())
    unknown = [n for n in names if n not in signal.Signals.__members__ or n in ("SIGINT", "SIGKILL", "SIGSTOP")]
    if unknown:
        sys.exit(f"error: --signals: cannot forward {', '.join(unknown)}; use names like SIGTERM,SIGUSR1 "
                 "(SIGINT always interrupts the whole launcher)")
    sys.exit(supervise(argv[split + 1:], names))


if __name__ == "__main__":
    main()

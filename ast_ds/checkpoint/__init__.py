"""Checkpoints: the layout contract, the manager that saves and restores a run, and the exports.

- ``ast_ds.checkpoint.layout``: every path and key of a run's checkpoints (tag format, rank files,
  ``COMPLETE``, ``latest``, ``hf_meta``, component keys); nothing outside this package spells them.
- ``ast_ds.checkpoint.manager``: ``CheckpointManager`` (engine + stateful components, save/resume) and
  ``RNGState``.
- ``ast_ds.checkpoint.consolidate``: sharded checkpoint -> exact-N:M Hugging Face folder.
- ``ast_ds.checkpoint.export``: writing Hugging Face folders (used by consolidation and the one-shot
  baselines) and the run's ``hf_meta``.

Importing this package is cheap (no DeepSpeed, no transformers).
"""

from ast_ds.checkpoint.layout import CheckpointError, find_checkpoint, resolve_tag_dir

__all__ = ["CheckpointError", "find_checkpoint", "resolve_tag_dir"]

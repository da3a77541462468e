"""The DeepSpeed ZeRO-3 adapter (imports deepspeed; import it only where an engine is built)."""

from ast_ds.zero.adapter import ShardedMasks, Segment

__all__ = ["ShardedMasks", "Segment"]

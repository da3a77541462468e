"""ast_ds: retrain dense causal LMs into N:M (2:4) sparsity with AST on DeepSpeed ZeRO-3.

Importing the package is cheap on purpose: it loads neither deepspeed nor transformers. The
heavy pieces live in submodules (``ast_ds.zero``, ``ast_ds.trainer`` ...) that import them.
"""

__version__ = "0.1.0"

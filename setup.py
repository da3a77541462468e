"""ast_ds: sparse-aware retraining of LLMs into N:M (2:4) sparsity with AST on DeepSpeed ZeRO-3.

Install torch first (see README), then DeepSpeed with --no-build-isolation, then this package:
DeepSpeed's build imports torch and would otherwise pull a second copy into its build environment.
"""

from setuptools import find_packages, setup

setup(
    name="ast_ds",
    version="0.1.0",
    description="Adaptive Sparse Trainer (AST) on DeepSpeed ZeRO-3: retrain LLMs into exact N:M sparsity",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ast_ds", "ast_ds.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<2.15",
        "deepspeed>=0.16,<0.20",
        "transformers>=4.44,<5",  # mosaicml-streaming pins transformers<5
        "accelerate>=0.26",  # transformers needs it to build models under ZeRO-3 (from_pretrained + zero.Init)
        "mosaicml-streaming>=0.11,<0.14",
        "sentencepiece>=0.2",
        "datasets>=2.20",
        "numpy>=1.24,<2.2",  # mosaicml-streaming pins numpy<2.2
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        # zstandard: the .jsonl.zst data tests; lm_eval: the harness test; peft: loading the LoRA adapter export
        "dev": ["pytest>=8", "ninja", "zstandard>=0.22", "lm_eval>=0.4,<0.5", "peft>=0.13"],
        "peft": ["peft>=0.13"],
        "lm_eval": ["lm_eval>=0.4,<0.5"],
        "zstd": ["zstandard>=0.22"],
    },
)

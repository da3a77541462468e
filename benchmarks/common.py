"""Shared pieces of the distributed benchmarks: the LLaMA-shaped model, its flags, ZeRO-3 config, timing."""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_model_args(ap, *, layers=8, hidden=512, intermediate=1376, vocab=4096, seq=128, micro_batch=2):
    ap.add_argument("--layers", type=int, default=layers)
    ap.add_argument("--hidden", type=int, default=hidden)
    ap.add_argument("--intermediate", type=int, default=intermediate)
    ap.add_argument("--vocab", type=int, default=vocab)
    ap.add_argument("--seq", type=int, default=seq)
    ap.add_argument("--micro_batch", type=int, default=micro_batch)
    ap.add_argument("--local_rank", type=int, default=-1)


def build_llama(args, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, max_position_embeddings=args.seq,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def zero3_config(args):
    cfg = {"train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": 1,
           "gradient_clipping": 1.0, "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True,
           "steps_per_print": 10**9}
    if torch.cuda.is_available():
        cfg["bf16"] = {"enabled": True}
    return cfg


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rank_mean(values, world):
    """Mean over steps, then over ranks (collective: every rank calls)."""
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.mean()) / world


def now():
    sync()
    return time.perf_counter()

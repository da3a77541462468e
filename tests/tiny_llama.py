"""Tiny LLaMA models and deterministic batches shared by tests, their multi-process workers and benchmarks."""

from __future__ import annotations

import torch

TARGET_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
                   "up_proj.weight", "down_proj.weight")


def tiny_llama(*, seed: int = 0, hidden: int = 64, intermediate: int = 128, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, vocab: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def target_names(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.endswith(TARGET_SUFFIXES)]


def batch(*, step: int, micro: int, rank: int, batch_size: int = 2, seq: int = 16, vocab: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(1_000_003 * step + 1_009 * micro + rank)
    return torch.randint(0, vocab, (batch_size, seq), generator=g)

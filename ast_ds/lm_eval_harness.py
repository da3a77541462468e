"""EleutherAI lm-evaluation-harness on an exported model, through its Hugging Face model class (HFLM).

Optional: ``pip install -e .[lm_eval]``. SLoRB exports are rebuilt with
``ast_ds.converters.load_exported`` before they are handed to the harness, so every method is
evaluated the same way. ``include_path`` adds a folder of local task YAMLs (e.g. tasks whose data are
local jsonl files, for machines without network).
"""

from __future__ import annotations

import torch


def run_lm_eval(model_dir: str, tasks: list[str], *, include_path: str | None = None, batch_size: int = 8,
                device: str = "cpu", limit: int | None = None, num_fewshot: int | None = None) -> dict:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError("--lm_eval needs EleutherAI's harness: pip install -e '.[lm_eval]'") from None
    from transformers import AutoTokenizer

    from ast_ds.converters import load_exported
    from ast_ds.model import check_model_dir

    check_model_dir(model_dir, what="--model")
    model = load_exported(model_dir, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    manager = TaskManager(include_path=include_path)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot)
    return {"tasks": out["results"], "config": {"model": model_dir, "limit": limit, "num_fewshot": num_fewshot}}

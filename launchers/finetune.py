"""Fine-tune an exported N:M model with LoRA that keeps the pattern (``mode=lora``), on DeepSpeed ZeRO-2 or 3.

    deepspeed --num_gpus 8 launchers/finetune.py --ds_config ds_configs/zero3.json --recipe finetune \\
        --model.path hf/llama2_7b_ast24 --data.data_dir data/gsm8k_mds --out_dir runs/llama2_7b_ast24_gsm8k
    python launchers/consolidate.py --checkpoint runs/llama2_7b_ast24_gsm8k --out hf/llama2_7b_ast24_gsm8k

Each target linear computes (W + s·B·A) ⊙ m with m the model's own N:M mask (W != 0), so the merged
model is exactly what was trained and exactly N:M; ``--lora.masked false`` trains plain LoRA instead, whose
merge consolidation re-prunes to N:M by magnitude (the usual recipe, for comparison). ``--lora.rank``,
``--lora.alpha``, ``--lora.targets`` set the adapters. Data: a data_prep/prepare.py folder (plain text; the
loss covers every token). Same config system, checkpoints, preemption and
``--resume`` as launchers/train.py; consolidation writes the merged N:M folder and ``adapter/`` in PEFT's
format (PEFT applies W + s·B·A without the mask: for masked LoRA use the merged folder).
"""

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)
from train import main

if __name__ == "__main__":
    main(doc=__doc__, default_recipe="finetune")

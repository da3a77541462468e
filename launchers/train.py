"""Train: AST N:M sparse retraining (or dense training) on DeepSpeed.

    deepspeed --num_gpus 8 launchers/train.py --ds_config ds_configs/zero3.json --recipe llama2_7b \\
        --model.path /models/Llama-2-7b-hf --data.data_dir /data/redpajama_mds --out_dir runs/llama2_7b_24

Settings come from --recipe, then --config FILE (YAML/JSON, nested like the recipe), then any
--section.field VALUE flag (e.g. --optim.lr 1e-5 --sparsity.pattern 4:8 --data.weights_mode constant).
"""

import argparse
import sys
import warnings

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)

from ast_ds.config import add_override_arguments, apply_overrides, load_file, overrides_from_args
from ast_ds.recipes import ABLATIONS, RECIPES, apply_ablation, get_recipe


def main(argv=None, *, doc: str = __doc__, default_recipe: str = "llama2_7b"):
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds_config", required=True, help="DeepSpeed JSON (engine settings; trainer values may be \"auto\")")
    parser.add_argument("--recipe", default=default_recipe, choices=sorted(RECIPES), help="named starting config")
    parser.add_argument("--config", help="YAML/JSON file applied over the recipe")
    parser.add_argument("--ablation", choices=list(ABLATIONS), help="one of the paper's ablations: " + "; ".join(
        f"{name}: {what}" for name, (what, _) in ABLATIONS.items()))
    parser.add_argument("--resume", help="auto (newest complete checkpoint of --out_dir, if any) or a checkpoint path")
    parser.add_argument("--stop_at", type=int, help="save and stop after this step (the LR/decay schedules keep "
                        "total_steps); resume later with --resume auto")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    add_override_arguments(parser)
    args = parser.parse_args(argv)

    cfg = get_recipe(args.recipe)
    if args.config:
        apply_overrides(cfg, load_file(args.config), source=args.config)
    apply_overrides(cfg, overrides_from_args(args), source="command line")
    if args.ablation:
        apply_ablation(cfg, args.ablation, init_mask=cfg.sparsity.init_mask)

    # torch 2.14 deprecates the c10d names DeepSpeed calls every step; keep the log readable
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    from ast_ds.trainer import NonFiniteError, train

    try:
        train(cfg, ds_config_path=args.ds_config, resume=args.resume, stop_at=args.stop_at)
    except NonFiniteError as e:  # every rank raises it together; the last good checkpoint is intact
        sys.exit(f"error: non-finite training: {e}")
    except (ValueError, OSError) as e:  # bad input (CheckpointError is a ValueError): the message says the fix
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

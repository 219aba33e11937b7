"""Train an AutoS predictor on one or several surviving-score datasets.

    accelerate launch recipes/train_autos.py                                   # on outputs/irp/irp
    python recipes/train_autos.py --score_datasets runs/seed0/irp runs/seed1/irp --eval_split runs
    python recipes/train_autos.py --config recipes/configs/autos_default.yaml --loss ranking
    python recipes/train_autos.py --push_to_hub true --hub_model_id me/autos-predictor [--hub_private_repo true]

Writes the predictor (config.json + model.safetensors, loadable with AutoSModel.from_pretrained), metrics.json
(held-out Spearman and top-k overlaps of AutoS next to magnitude and SNIP), README.md (model card) and loss_curve.png;
--push_to_hub uploads them to hub_model_id after training (an impossible push, e.g. offline, fails before any work).
"""

# Only the argument dataclass at the top (it imports little): --help stays fast; the library loads in main().
from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.predictor.arguments import AutoSTrainingArguments

# The recipe's argument dataclasses (tests/recipes build its parser from them).
ARGUMENTS = (AutoSTrainingArguments,)


def main() -> None:
    (args,) = parse_recipe_args(ARGUMENTS)
    from autosparse_hf.predictor.training import metrics_markdown, train_autos

    _, report = train_autos(args)
    print(f"held out: {report['eval_rows']} rows of {report['eval_tensors']} in runs {report['eval_runs']}")
    print(metrics_markdown(report["metrics"]))
    print(f"\npredictor written to {args.output_dir}")
    if args.push_to_hub:
        print(f"pushed to the Hub as {args.hub_model_id}")


if __name__ == "__main__":
    main()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

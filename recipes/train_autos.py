"""Train an AutoS predictor on one or several surviving-score datasets.

    accelerate launch recipes/train_autos.py                                   # on outputs/irp/irp
    python recipes/train_autos.py --score_datasets runs/seed0/irp runs/seed1/irp --eval_split runs
    python recipes/train_autos.py --config recipes/configs/autos_default.yaml --loss ranking

Writes the predictor (config.json + model.safetensors, loadable with AutoSModel.from_pretrained), metrics.json
(held-out Spearman and top-k overlaps of AutoS next to magnitude and SNIP) and loss_curve.png.
"""

from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.predictor.training import AutoSTrainingArguments, metrics_markdown, train_autos


def main() -> None:
    (args,) = parse_recipe_args([AutoSTrainingArguments])
    _, report = train_autos(args)
    print(f"held out: {report['eval_rows']} rows of {report['eval_tensors']} in runs {report['eval_runs']}")
    print(metrics_markdown(report["metrics"]))
    print(f"\npredictor written to {args.output_dir}")


if __name__ == "__main__":
    main()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""``chdl bench``: DIFFUMA and the baselines side by side under one training budget (docs/bench.md)."""

from __future__ import annotations

import os

import click

from chdl.cli.options import POSITIVE, LocalPath, OutputPath, quiet_option


@click.command("bench")
@click.option("--data", required=True, type=LocalPath(exists=True, file_okay=False, dir_okay=True),
              help="Curated dataset (zarr folder).")
@click.option("--models", required=True,
              help="Comma-separated registry names, optionally name:preset (e.g. diffuma,simvp,simvp:v1,pastnet).")
@click.option("--epochs", default=None,
              help="Epoch counts to report; each model trains once for the largest, evaluated at each "
                   "[default: 10,20,40 unless --budget-minutes].")
@click.option("--budget-minutes", type=POSITIVE, default=None,
              help="Instead of --epochs: train every model for this many minutes of training time (optimiser "
                   "steps; validation excluded), one after the other, and evaluate each at the end.")
@click.option("--pred-len", "pred_len", default=None,
              help="Prediction lengths for the metric-by-length table, e.g. 3,6,9,12.")
@click.option("--pred-len-mode", type=click.Choice(["retrain", "horizon"]), default="retrain", show_default=True,
              help="retrain: one run per length (as the paper); horizon: first k frames of the main runs.")
@click.option("--out", required=True, type=OutputPath(file_okay=False), help="Output folder.")
@click.option("--preset", default="default", show_default=True, help="Model preset for models given without one.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="run.<field>=v (all runs), model.<field>=v (all models) or <model>.<field>=v; repeatable.")
@click.option("--convention", type=click.Choice(["per_pixel", "openstl"]), default="per_pixel", show_default=True,
              help="Metric convention (docs/training.md).")
@click.option("--split", type=click.Choice(["val", "test", "train", "all"]), default="val", show_default=True,
              help="Split to evaluate on (test: the held-out split curate makes with split.test_fraction).")
@click.option("--max-eval-sequences", type=click.IntRange(min=1), default=None,
              help="Evaluate on the first N sequences of the split only.")
@click.option("--grid-sequences", type=click.IntRange(min=0), default=2, show_default=True,
              help="Sequences in the prediction grid (0 = no grid).")
@click.option("--throughput-steps", type=click.IntRange(min=0), default=5, show_default=True,
              help="Timed steps for the samples/s columns (0 = skip).")
@click.option("--resume", is_flag=True, help="Continue a bench in --out (finished runs are not retrained).")
@quiet_option()
def bench(data, models, epochs, budget_minutes, pred_len, pred_len_mode, out, preset, overrides, convention, split,
          max_eval_sequences, grid_sequences, throughput_steps, resume, quiet):
    """Train each model under the same budget (epochs or minutes of training time) and data, evaluate with the
    same metric code, and write the paper's comparison tables (Markdown + JSON), plots and a prediction grid
    to --out."""
    from pathlib import Path

    from chdl.cli.train import open_verified_dataset
    from chdl.dataset import DatasetFormatError
    from diffuma.output_folder import check_apart_from_input

    try:  # before any work: not into the dataset; every shard present and as its checksum says (train does so)
        check_apart_from_input(out, data, data_folders_too=True)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    open_verified_dataset(Path(data), "all", None, quiet)
    from diffuma.bench import BenchError, parse_int_list, run_bench, terminal_summary
    from diffuma.training import ConfigError, TrainingDiverged
    from diffuma.training.checkpoint import CheckpointError

    try:
        if epochs is None and budget_minutes is None:
            epochs = "10,20,40"
        epoch_list = parse_int_list(epochs, "--epochs")
        if epochs is not None and not epoch_list:
            raise BenchError("--epochs: give at least one epoch count")
        report = run_bench(data, models, epoch_list, out, budget_minutes=budget_minutes,
                           pred_lens=parse_int_list(pred_len, "--pred-len"),
                           pred_len_mode=pred_len_mode, preset=preset, overrides=list(overrides),
                           convention=convention, split=split, max_eval_sequences=max_eval_sequences,
                           grid_sequences=grid_sequences, throughput_steps=throughput_steps, resume=resume,
                           progress=not quiet)
    except (BenchError, DatasetFormatError, ConfigError, CheckpointError, TrainingDiverged, FileExistsError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(os.path.join(out, "bench.md"))
    for line in terminal_summary(report):
        click.echo(line)

"""``chdl bench`` end to end on a tiny dataset written with the real DatasetWriter, through the real CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from chdl.cli import main
from chdl.dataset import SPLIT_TRAIN, SPLIT_VAL, DatasetWriter
from diffuma.evaluation import result_key


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions are fastest on one thread (and the shared CI cores are often busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """8 sequences (6 train, 2 val) of 8 frames, 1x16x24: a bright square moving one pixel per frame."""
    path = tmp_path_factory.mktemp("data") / "tiny.zarr"
    n, t, h, w = 8, 8, 16, 24
    rng = np.random.default_rng(0)
    frames = np.zeros((n, t, 1, h, w), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, h - 5), rng.integers(0, w - 12)
        for k in range(t):
            frames[i, k, 0, r:r + 4, c + k:c + k + 4] = 200
    writer = DatasetWriter.create(path, n_sequences=n, frames_per_sequence=t, channels=1, height=h, width=w,
                                  dtype=np.uint8, sequences_per_shard=4, in_frames=3, out_frames=3)
    split = np.array([SPLIT_TRAIN] * 6 + [SPLIT_VAL] * 2, np.uint8)
    for s in range(writer.n_shards):
        rg = writer.shard_range(s)
        writer.write_shard(s, frames=frames[rg.start:rg.stop], split=split[rg.start:rg.stop])
    writer.finalize()
    return path


BASE = ["--preset", "tiny", "--set", "run.batch_size=3", "--set", "run.num_workers=0", "--set", "run.device=cpu",
        "--set", "run.lr=3e-3", "--set", "run.val_every_epochs=0", "--throughput-steps", "1", "--grid-sequences", "1", "--quiet"]


def test_bench_end_to_end(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--data", str(tiny_dataset), "--models", "simvp,pastnet", "--epochs", "1,2",
            "--pred-len", "1,3", "--pred-len-mode", "horizon", "--out", str(out), *BASE]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((out / "bench.json").read_text())
    assert list(report["models"]) == ["simvp", "pastnet"]
    assert report["convention"] == "per_pixel" and report["epochs"] == [1, 2]
    for label, r in report["models"].items():
        # the epoch table comes from one run: both epoch checkpoints of the same run folder, evaluated
        assert (out / "runs" / label / "checkpoints" / "epoch_0001.pt").is_file()
        assert (out / "runs" / label / "checkpoints" / "epoch_0002.pt").is_file()
        e1, e2 = r["by_epoch"]["1"]["overall"], r["by_epoch"]["2"]["overall"]
        assert e1["mse"] != e2["mse"]
        assert e2 == r["final"]["overall"]
        assert r["params"] > 0 and r["throughput"]["train_samples_per_s"] > 0
        assert r["throughput"]["infer_samples_per_s"] > 0
        # horizon mode: PL3 is the full 3-frame prediction, PL1 its first frame
        assert r["by_pred_len"]["3"]["mse"] == pytest.approx(r["final"]["overall"]["mse"])
        assert r["by_pred_len"]["1"]["mse"] == pytest.approx(r["final"]["per_frame"][0]["mse"])
        # 6 train sequences in batches of 3, 2 epochs: 4 steps, 12 samples
        assert (r["training"]["steps"], r["training"]["samples"]) == (4, 12)
        assert r["training"]["budget_minutes"] is None and r["training"]["train_seconds"] > 0
        # what the time bought, comparable across models: FLOPs per training sample (x samples, in bench.md)
        assert r["gflops_train_sample"] > 0
        assert r["paired"]["constant_motion"]["mse"]["n"] == report["n_sequences"]  # sequence by sequence
    copy = report["copy_last_frame"]["overall"]
    assert 0 < copy["mse"] < 1 and copy["ssim"] < 1  # the square moves, so copying the last frame errs
    motion = report["constant_motion"]
    assert len(motion["per_frame"]) == 3 and motion["overall"]["mse"] != copy["mse"]
    assert set(report["constant_motion_by_pred_len"]) == set(report["copy_last_frame_by_pred_len"]) == {"1", "3"}
    assert report["constant_motion_by_pred_len"]["3"]["mse"] == pytest.approx(motion["overall"]["mse"])
    md = (out / "bench.md").read_text()
    for needle in ("## Overall", "## Metric by epoch", "## Metric by prediction length", "copy-last-frame",
                   "Metric convention: `per_pixel`", "| simvp |", "| pastnet |", "samples/s",
                   "| steps | samples | train compute (GFLOP) |"):
        assert needle in md, needle
    assert md.count("| copy-last-frame |") == md.count("| constant-motion |") == 3  # one row in every table
    assert md.count("Paired, sequence by sequence") == 2  # one line per model
    assert "95 % confidence half-widths of these means over the" in md  # as eval's table has it
    # the notes eval gives, per model (this split is tiny): in bench.md, bench.json and the terminal
    assert all(any(n.startswith("only ") for n in r["notes"]) for r in report["models"].values())
    assert "**Note** (simvp): only " in md and "note (simvp): only " in res.output
    # what each row is (preset, --set overrides): a pasted table read as the default preset
    presets = {label: r["preset"] for label, r in report["models"].items()}
    assert f"Models: simvp = simvp preset `{presets['simvp']}`; pastnet = pastnet preset `{presets['pastnet']}`" in md
    for png in ("plots/by_epoch.png", "plots/per_frame.png", "plots/by_pred_len.png", "grid_seq0.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "simvp" in res.output and "copy-last-frame" in res.output and "constant-motion" in res.output
    # what a cited row can be traced to: the data's content, the code, each run's seed and checkpoint digest
    from chdl.provenance import code_fingerprint
    from diffuma.training.checkpoint import file_digest

    assert report["dataset"]["identity"]["content"] and report["dataset"]["path_resolved"] == str(tiny_dataset.resolve())
    assert report["code"]["code"] == code_fingerprint() and report["dataset"]["max_value"] == 255.0
    for label, r in report["models"].items():
        assert r["seed"] == 0 and r["checkpoint_blake3"] == file_digest(r["checkpoint"])[0]
    ident = report['dataset']['identity']
    assert f"Dataset content {ident['content'][:16]}, data {ident['data'][:16]}; chdl " in md and "seeds 0." in md
    # ... and the machine it ran on, loaded how (equal wall time is equal compute only on alike machines)
    m = report["machine"]
    assert m["cores"] >= 1 and m["torch_threads"] >= 1 and m["load_average_1min"] >= 0 <= m["load_average_1min_end"]
    threads = f"{m['torch_threads']} thread{'' if m['torch_threads'] == 1 else 's'}"  # ("torch 1 threads")
    assert f"Machine: {m['cpu'] or 'CPU not known'}, {m['cores']} cores, torch {threads}" in md
    # a methods section's recipe, resolved (the defaults too, not only what was overridden), and the split's size
    for r in report["models"].values():
        assert r["recipe"]["optimizer"] == "adamw" and r["recipe"]["lr"] > 0 and r["recipe"]["train_sequences"] == 6
        assert r["recipe"]["batch_size"] == 3 and r["recipe"]["grad_clip"] == 1.0
        assert r["recipe"]["precision"] == "fp32" and r["recipe"]["device"] == "cpu"  # ("auto" as it resolved)
    assert "| none |" in md  # (no EMA: said, not a column left out)
    assert "| model | optimizer | lr | weight_decay |" in md and "| simvp | adamw |" in md
    # per sequence, every row, for one's own tests: the dataset indices, and values whose means are the table's
    import csv

    from chdl.dataset import open_dataset

    assert report["sequences"] == open_dataset(tiny_dataset).indices("val").tolist()
    rows = list(csv.DictReader((out / "per_sequence.csv").open()))
    assert {x["row"] for x in rows} == {"simvp", "pastnet", "copy-last-frame", "constant-motion"}
    for row, r in (("simvp", report["models"]["simvp"]["final"]), ("copy-last-frame", report["copy_last_frame"])):
        values = [float(x["mse"]) for x in rows if x["row"] == row]
        assert [int(x["sequence"]) for x in rows if x["row"] == row] == report["sequences"]
        assert values == r["per_sequence"]["mse"] and sum(values) / len(values) == pytest.approx(r["overall"]["mse"])


@dataclasses.dataclass
class ExampleConfig:
    in_frames: int = 5  # input frames (the trainer sets the data fields from the dataset)
    out_frames: int = 5  # predicted frames
    channels: int = 1  # channels per frame
    height: int = 64  # frame height, px
    width: int = 64  # frame width, px


class ItemLoggingModel(torch.nn.Module):
    """A model added as docs/model.md ("Adding a model") says, but logging with float(tensor), which works in
    training and not on the meta device where bench counts FLOPs. Registered by the test below."""

    Config = ExampleConfig

    def __init__(self, config: ExampleConfig):
        super().__init__()
        self.config = config
        self.conv = torch.nn.Conv2d(config.in_frames * config.channels, config.out_frames * config.channels, 3,
                                    padding=1)

    def forward(self, x):
        b, t, c, h, w = x.shape  # (B, T_in, C, H, W) -> (B, T_out, C, H, W)
        return self.conv(x.reshape(b, t * c, h, w)).reshape(b, self.config.out_frames, c, h, w)

    def training_loss(self, x, y, step=0, total_steps=1):
        mse = torch.nn.functional.mse_loss(self(x), y)
        return mse, {"mse": float(mse.detach())}  # (Tensor.item() cannot be called on meta tensors)


PRESETS = {"default": {}, "tiny": {}}  # (the registry reads a model's presets from its module)


def test_a_model_whose_flops_cannot_be_counted_still_gets_its_row(tiny_dataset, tmp_path, monkeypatch):
    """A user's model that cannot run on the meta device: bench used to end in a traceback after every model had
    trained; now that row has no FLOPs ("–") and a note saying why, and everything else is there."""
    from diffuma.models import registry

    monkeypatch.setitem(registry.MODELS, "itemlog", f"{__name__}:ItemLoggingModel")
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["bench", "--data", str(tiny_dataset), "--models", "itemlog,simvp", "--epochs", "1",
                                    "--out", str(out), *BASE])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((out / "bench.json").read_text())
    r = report["models"]["itemlog"]
    assert r["gflops_train_sample"] is None and report["models"]["simvp"]["gflops_train_sample"] > 0
    assert any(n.startswith("FLOPs not counted: its training_loss does not run on the meta device") for n in r["notes"])
    md = (out / "bench.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| itemlog |"))
    assert row.split(" | ")[4] == "–" and f"| {r['params']:,} |" in row  # (a small model: its count, not 0.00M)
    assert "**Note** (itemlog): FLOPs not counted" in md


def test_bench_pred_len_retrains_per_length(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--data", str(tiny_dataset), "--models", "simvp:tiny", "--epochs", "1", "--pred-len", "2,3",
            "--out", str(out), "--convention", "openstl", *BASE]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((out / "bench.json").read_text())
    r = report["models"]["simvp:tiny"]
    assert (out / "runs" / "simvp-tiny-pl2" / "checkpoints" / "epoch_0001.pt").is_file()  # a 2-frame run
    assert not (out / "runs" / "simvp-tiny-pl3").exists()  # 3 = the main runs' length: reused
    assert r["by_pred_len"]["3"] == r["final"]["overall"]
    assert set(report["copy_last_frame_by_pred_len"]) == set(report["constant_motion_by_pred_len"]) == {"2", "3"}
    assert "Metric convention: `openstl`" in (out / "bench.md").read_text()
    # the same --out again: refused without --resume; with it, nothing is retrained and the report is rebuilt
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "--resume" in again.output
    ck = out / "runs" / "simvp-tiny" / "checkpoints" / "epoch_0001.pt"
    stamp = ck.stat().st_mtime_ns
    (out / "bench.md").unlink()
    resumed = CliRunner().invoke(main, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert ck.stat().st_mtime_ns == stamp and (out / "bench.md").is_file()
    assert "simvp:tiny: training for " in res.output and "to predict 2 frames\n" in res.output
    assert "simvp:tiny: resuming its run for " in resumed.output
    assert "to predict 2 frames (a finished run is kept as it is)" in resumed.output, resumed.output
    assert json.loads((out / "bench.json").read_text())["models"]["simvp:tiny"]["final"] == r["final"]
    # resumed with another --set: one line saying what differs and what to do (it said "resume with a different
    # config ... start a new --out", naming the trainer's checkpoint)
    other = CliRunner().invoke(main, [*args, "--resume", "--set", "run.lr=0.5"])
    assert other.exit_code == 1 and other.output.strip().splitlines()[-1] == (
        f"Error: {out / 'runs' / 'simvp-tiny'}: this bench's simvp:tiny run was trained with other options (run.lr: "
        "saved 0.003 vs given 0.5); resume with the --models, --preset, --epochs/--budget-minutes and --set of the "
        "bench you resume, or choose another --out")
    assert ck.stat().st_mtime_ns == stamp
    # resumed without its --pred-len, or with other --models: refused before anything (it rewrote bench.json without
    # their rows, exit 0); an older bench.json without "asked" still keeps its models' rows
    before = (out / "bench.json").read_bytes()
    def with_option(option: str, value: str) -> list[str]:
        i = args.index(option)
        return [*args[:i + 1], value, *args[i + 2:]]

    for option, value, said in (("--pred-len", "2", "--pred-len 2,3 (given: 2)"),
                                ("--models", "simvp:tiny,convlstm", "--models simvp:tiny (given: simvp:tiny,convlstm)"),
                                ("--convention", "per_pixel", "--convention openstl (given: per_pixel)")):
        r2 = CliRunner().invoke(main, [*with_option(option, value), "--resume"])
        assert r2.exit_code == 1 and r2.output.strip().splitlines()[-1] == (
            f"Error: {out}: it was begun with {said}; resume with the options of the bench you resume, or choose "
            "another --out"), r2.output
        assert (out / "bench.json").read_bytes() == before
    old = json.loads(before)
    del old["asked"]
    (out / "bench.json").write_text(json.dumps(old))
    r2 = CliRunner().invoke(main, [*with_option("--models", "simvp"), "--resume"])
    assert r2.exit_code == 1 and "it was begun with --models with simvp:tiny (given: simvp)" in r2.output, r2.output
    # --set run.epochs was overridden by --epochs without a word
    r2 = CliRunner().invoke(main, [*with_option("--out", str(tmp_path / "b2")), "--set", "run.epochs=3"])
    assert r2.exit_code == 1 and r2.output.strip().splitlines()[-1] == (
        "Error: --set run.epochs: the bench sets it from --epochs; give --epochs instead"), r2.output


def test_bench_with_a_time_budget_records_what_each_model_reached(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--data", str(tiny_dataset), "--models", "simvp", "--budget-minutes", "0.002", "--out", str(out),
            *BASE]
    bad = CliRunner().invoke(main, [*args, "--set", "run.lr=abc"])  # named as chdl train names it ("--set: run.lr")
    assert bad.exit_code == 1 and bad.output.strip().splitlines()[-1] == \
        "Error: --set run.lr=abc: run.lr: must be a number, got 'abc'", bad.output
    epochs = CliRunner().invoke(main, [*args, "--set", "run.epochs=3"])  # (it said "give --epochs instead")
    assert epochs.exit_code == 1 and epochs.output.strip().splitlines()[-1] == (
        "Error: --set run.epochs: the bench sets it from --epochs; give --epochs instead (and no --budget-minutes) "
        "for an epoch bench"), epochs.output
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((out / "bench.json").read_text())
    assert report["budget_minutes"] == 0.002 and report["epochs"] == []
    r = report["models"]["simvp"]
    t = r["training"]
    assert t["budget_minutes"] == 0.002 and t["steps"] >= 1 and t["samples"] == 3 * t["steps"]  # batches of 3
    assert t["train_seconds"] > 0 and t["stopped_by"] in ("budget", "schedule")
    last = out / "runs" / "simvp" / "checkpoints" / "last.pt"
    assert r["by_epoch"] == {} and r["final"]["n_sequences"] == 2  # the final weights (last.pt), evaluated
    assert torch.load(last, weights_only=True)["step"] == t["steps"]
    md = (out / "bench.md").read_text()
    assert "0.002 min of training time" in md and "| steps | samples | train compute (GFLOP) | train time |" in md
    assert "| simvp | " in md and f"- simvp: {t['stopped_by']}, {t['steps']} " in md
    assert "## Metric by epoch" not in md and not (out / "plots" / "by_epoch.png").exists()
    assert md.count("| copy-last-frame |") == md.count("| constant-motion |") == 1
    assert f"({t['steps']} steps, {t['samples']} samples)" in res.output
    # a model that trained for less than 90 % of its budget is flagged: not an equal-compute row
    from diffuma.bench import markdown_report
    t["train_seconds"] = 0.5 * 0.002 * 60
    assert "used 50% of its budget" in markdown_report(report)
    t["train_seconds"] = 0.95 * 0.002 * 60
    assert "of its budget" not in markdown_report(report)
    r["overrides"] = {"spatial_hidden": 8, "temporal_hidden": 32}  # --set simvp.spatial_hidden=8 ...: said so
    assert "Models: simvp = simvp preset `tiny`, spatial_hidden=8, temporal_hidden=32." in markdown_report(report)
    # --resume: the spent budget is not trained again, and the report keeps when and under what load the models
    # trained and their timed pass (a resume rewrote them with its own idle machine's: another model looked faster)
    assert r["trained_under"]["load_average_1min"] is not None and r["trained_under"]["at"] >= report["created"]
    stamp = last.stat().st_mtime_ns
    resumed = CliRunner().invoke(main, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert last.stat().st_mtime_ns == stamp
    assert "simvp: resuming its run (to train for 0.002 min of training time in all; a finished run is kept" \
        in resumed.output and "simvp: training for" not in resumed.output
    again = json.loads((out / "bench.json").read_text())
    assert again["created"] == report["created"] and len(again["resumed"]) == 1
    assert again["models"]["simvp"]["trained_under"] == r["trained_under"]
    assert again["models"]["simvp"]["throughput"] == r["throughput"]
    md = (out / "bench.md").read_text()
    assert f"Begun {report['created']}, resumed {again['resumed'][0]}." in md
    assert f"Trained: simvp from {r['trained_under']['at']}, load average" in md


def test_a_resumed_bench_keeps_what_it_measured_for_the_same_weights_only(tiny_dataset, tmp_path, monkeypatch):
    """A bench resumed keeps when it began, each earlier resume, and the training conditions and timed pass of a model
    whose final weights are those it recorded; what it lacks (a bench from before 2026-12-03) or what belongs to
    other weights (a run trained again) is measured now. --resume on a fresh folder is a first bench."""
    import os

    from diffuma.bench import _previous_report

    loads = iter(range(1, 10_000))  # each reading of the load average a higher one: which reading went where
    monkeypatch.setattr(os, "getloadavg", lambda: (float(next(loads)), 0.0, 0.0))
    out = tmp_path / "bench"
    args = ["bench", "--data", str(tiny_dataset), "--models", "simvp", "--budget-minutes", "0.002", "--out", str(out),
            *BASE, "--grid-sequences", "0", "--resume"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "simvp: training for 0.002 min" in res.output and "resuming" not in res.output
    bench = out / "bench.json"
    report = json.loads(bench.read_text())
    assert "resumed" not in report and "resumed" not in (out / "bench.md").read_text()
    tu, m = report["models"]["simvp"]["trained_under"], report["machine"]
    assert m["load_average_1min"] < tu["load_average_1min"] < tu["load_average_1min_end"] < m["load_average_1min_end"]
    assert (f"Trained: simvp from {tu['at']}, load average {tu['load_average_1min']} before, "
            f"{tu['load_average_1min_end']} after.") in (out / "bench.md").read_text()

    def resume_with(edit) -> dict:
        j = json.loads(bench.read_text())
        edit(j["models"]["simvp"], j)
        bench.write_text(json.dumps(j))
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output + repr(r.exception)
        return json.loads(bench.read_text())

    then = {"at": "2000-01-01T00:00:00Z", "load_average_1min": 0.5, "load_average_1min_end": 0.75}
    timed = {**report["models"]["simvp"]["throughput"], "timed": "when it was trained"}
    # the same weights: kept as recorded
    again = resume_with(lambda s, j: (s.update(trained_under=then, throughput=timed),
                                      j.update(created="2000-01-01T00:00:00Z", resumed=["2000-01-02T00:00:00Z"])))
    assert again["created"] == "2000-01-01T00:00:00Z" and again["resumed"][0] == "2000-01-02T00:00:00Z"
    assert len(again["resumed"]) == 2 and again["resumed"][1] > "2000-01-02T00:00:00Z"
    assert again["models"]["simvp"]["trained_under"] == then and again["models"]["simvp"]["throughput"] == timed
    assert (f"Begun 2000-01-01T00:00:00Z, resumed 2000-01-02T00:00:00Z, {again['resumed'][1]}. Trained: simvp from "
            "2000-01-01T00:00:00Z, load average 0.5 before, 0.75 after.") in (out / "bench.md").read_text()
    # a bench that recorded neither (written before they were, or timed with --throughput-steps 0): measured now
    again = resume_with(lambda s, j: (s.pop("trained_under"), s.pop("throughput")))
    assert set(again["models"]["simvp"]["trained_under"]) == {"at", "load_average_1min", "load_average_1min_end"}
    assert set(again["models"]["simvp"]["throughput"]) == set(timed) - {"timed"}
    # other weights than the bench recorded: nothing of theirs is carried over
    again = resume_with(lambda s, j: s.update(checkpoint_blake3="0" * 64, trained_under=then, throughput=timed))
    assert again["models"]["simvp"]["trained_under"]["at"] > then["at"]
    assert "timed" not in again["models"]["simvp"]["throughput"]
    # a bench.json that cannot be read, or is not a report: nothing to keep (it is measured again)
    for text in ("{", "[1, 2]", "\udcff"):
        bench.write_bytes(text.encode("utf-8", "surrogateescape"))
        assert _previous_report(out) == {}
    bench.unlink()
    assert _previous_report(out) == {}


def test_frames_smaller_than_the_ssim_window_are_refused_before_training(tmp_path):
    """8x8 frames: bench told to set run.val_every_epochs=0, which then trained and crashed in scikit-image."""
    data = tmp_path / "s8.zarr"
    writer = DatasetWriter.create(data, n_sequences=4, frames_per_sequence=8, channels=1, height=8, width=8,
                                  dtype=np.uint8, sequences_per_shard=4, in_frames=3, out_frames=3)
    writer.write_shard(0, frames=np.zeros((4, 8, 1, 8, 8), np.uint8),
                       split=np.array([SPLIT_TRAIN] * 3 + [SPLIT_VAL], np.uint8))
    writer.finalize()
    res = CliRunner().invoke(main, ["bench", "--data", str(data), "--models", "simvp", "--epochs", "1",
                                    "--out", str(tmp_path / "b"), *BASE])
    assert res.exit_code == 1 and res.output == (f"Error: {data}: frames of 8x8 px, smaller than the 11 x 11 px window of "
                                                 "the SSIM that every evaluation scores; make the dataset at 11 x 11 px "
                                                 "or more\n"), res.output
    assert not (tmp_path / "b").exists()


def test_an_out_under_a_file_is_one_line(tiny_dataset, tmp_path):
    """`chdl bench --out afile/x` was a 30-line NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "x"
    res = CliRunner().invoke(main, ["bench", "--data", str(tiny_dataset), "--models", "simvp", "--epochs", "1",
                                    "--out", str(out), *BASE])
    assert res.exit_code == 1 and res.output == (f"Error: {out}: cannot create the bench folder: {tmp_path / 'afile'} "
                                                 "is a file, not a folder\n"), res.output


def test_epochs_and_budget_minutes_together_are_a_one_line_error(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["bench", "--data", str(tiny_dataset), "--models", "simvp", "--epochs", "1",
                                    "--budget-minutes", "1", "--out", str(out), *BASE])
    assert res.exit_code == 1
    assert res.output == "Error: --epochs and --budget-minutes are mutually exclusive: give one of them\n"
    assert not out.exists()


@pytest.mark.parametrize("extra,message", [
    (["--models", "simvp,nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["--models", "simvpp"], "--models: unknown model 'simvpp' (did you mean 'simvp'?)"),  # (it listed them all)
    (["--models", "simvp:tinny"], "--models: simvp has no preset 'tinny' (did you mean 'tiny'?)"),
    (["--models", "simvp", "--pred-len", "9"],
     "sequences have 8 frames, too few for 3 input + 9 predicted frames (--pred-len 9)"),
    (["--models", "simvp", "--set", "run.nosuchfield=1"], "nosuchfield"),
    (["--models", "simvp", "--set", "simvp.translator=lstm"], "translator"),
    (["--models", "simvp", "--epochs", "0"], ">= 1"),
    # a max_steps that ends the runs before the last epoch asked for (it trained, then failed on the missing checkpoint)
    (["--models", "simvp", "--epochs", "1,2", "--set", "run.max_steps=3"],
     "--set run.max_steps=3 ends every run before epoch 2 (4 steps of 2 per epoch), which --epochs asks for"),
])
def test_bench_bad_requests_fail_cleanly(tiny_dataset, tmp_path, extra, message):
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["bench", "--data", str(tiny_dataset), "--out", str(out), *BASE, *extra])
    assert res.exit_code == 1, res.output
    assert message in res.output
    assert not (out / "bench.json").exists()


@pytest.mark.parametrize("minutes", ["0", "-1"])
def test_a_budget_of_no_time_is_a_usage_error(tiny_dataset, tmp_path, minutes):
    """Exit 1 from bench's own check, while click's range checks on the other options exit 2 (a CLI sweep)."""
    res = CliRunner().invoke(main, ["bench", "--data", str(tiny_dataset), "--out", str(tmp_path / "b"), *BASE,
                                    "--models", "simvp", "--budget-minutes", minutes])
    assert res.exit_code == 2 and "Invalid value for '--budget-minutes'" in res.output, res.output


def test_budget_text_says_1_epoch_not_1_epochs():
    from diffuma.bench import _budget_text

    assert _budget_text({"epochs": [1], "budget_minutes": None}) == "1 epoch"
    assert _budget_text({"epochs": [1, 2], "budget_minutes": None}) == "2 epochs"
    assert _budget_text({"epochs": [], "budget_minutes": 1.0}) == "1 min of training time"


def test_terminal_summary_pads_labels_to_the_longest():
    from diffuma.bench import terminal_summary
    from diffuma.evaluation import BASELINES

    def overall(mse):
        return {"overall": {"mse": mse, "mae": 0.01, "ssim": 0.9}}

    report = {"convention": "per_pixel", "models": {
        "simvp": {"final": overall(0.0141), "training": {"steps": 10, "samples": 30}},
        "diffuma:tiny-mmnist": {"final": overall(141.55), "training": {"steps": 12, "samples": 36}}},
        **{result_key(name): overall(0.02) for name in BASELINES}}
    lines = terminal_summary(report)
    assert lines[-1] == "  metric convention: per_pixel"
    rows = lines[:-1]
    assert [r.split()[0] for r in rows] == ["simvp", "diffuma:tiny-mmnist", *BASELINES]
    assert len({r.index(" MSE ") for r in rows}) == 1  # one column for every label, long ones included
    assert rows[1].startswith("  diffuma:tiny-mmnist  MSE 141.55  MAE 0.01  SSIM 0.9000  (12 steps, 36 samples)")
    assert "steps" not in rows[-1]  # baselines did not train


def test_bench_tables_print_metrics_as_eval_does():
    """A fixed precision per metric, trailing zeros kept (a column mixed 0.0141 with 0.0086286)."""
    from diffuma.bench import _fmt

    assert [_fmt("mse", 0.0141), _fmt("mse", 0.0086286), _fmt("mae", 248.0), _fmt("ssim", 0.5), _fmt("psnr", 30.0)] == \
        ["0.014100", "0.0086286", "248.00", "0.5000", "30.00"]


def test_the_terminal_summary_says_when_a_row_is_not_equal_compute_or_not_on_val():
    """bench.md flagged a budget run that trained 78 of its 120 s ("not an equal-compute row"); the terminal
    summary, which is what a user reads, did not, nor which split it scored when not val."""
    from diffuma.bench import terminal_summary
    from diffuma.evaluation import BASELINES

    def overall(mse):
        return {"overall": {"mse": mse, "mae": 0.01, "ssim": 0.9}}

    report = {"convention": "per_pixel", "budget_minutes": 2.0, "split": "train", "models": {
        "diffuma:tiny": {"final": overall(0.003), "training": {"steps": 57, "samples": 228, "train_seconds": 78.3}},
        "simvp:tiny": {"final": overall(0.005), "training": {"steps": 131, "samples": 524, "train_seconds": 120.1}}},
        **{result_key(name): overall(0.02) for name in BASELINES}}
    lines = terminal_summary(report)
    assert lines[0].endswith("(57 steps, 228 samples)  -- used 65% of its budget: not an equal-compute row")
    assert lines[1].endswith("(131 steps, 524 samples)")
    assert lines[-2:] == ["  scored on the train split", "  metric convention: per_pixel"]
    report["split"] = "val"
    assert "split" not in " ".join(terminal_summary(report))


@pytest.mark.parametrize("text", ["0,2", "-1", "2,x"])
def test_epoch_and_length_lists_take_positive_integers_only(text):
    from diffuma.bench import BenchError, parse_int_list

    with pytest.raises(BenchError, match=r"^--pred-len: "):
        parse_int_list(text, "--pred-len")
    assert parse_int_list("3, 1,3", "--pred-len") == [1, 3] and parse_int_list("", "--pred-len") == []


def test_a_budget_bench_on_a_busy_machine_says_so():
    """A 0.5-minute budget bench at load 3-4 on 2 cores gave DIFFUMA 20 steps and SimVP 8 (102 and 94 idle), without
    a word until bench.md's header: it now warns when it begins (an epoch bench is not bought by time: no warning)."""
    from diffuma.bench import busy_machine

    busy = {"cores": 2, "load_average_1min": 3.5}
    assert busy_machine(busy, 0.5).startswith("load average 3.5 on 2 cores before the bench began: other work shares")
    assert busy_machine(busy, None) is None
    assert busy_machine({"cores": 2, "load_average_1min": 1.9}, 0.5) is None
    assert busy_machine({"cores": 2, "load_average_1min": None}, 0.5) is None

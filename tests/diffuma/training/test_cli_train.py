"""`chdl train` / `chdl eval` / `chdl predict` end to end with the real tiny DIFFUMA preset on a small curated
dataset, and a raw recording as predict input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from PIL import Image

from acquisition.raw import RecordingWriter
from chdl.cli import main
from train_helpers import write_moving_square_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_moving_square_dataset(root / "d.zarr", n=6, n_val=2)
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--config", "diffuma_tiny", "--out", str(root / "run"),
                                  "--set", "run.max_steps=2", "--set", "run.epochs=1", "--set", "run.batch_size=2",
                                  "--set", "model.l1_weight=0.5", "--no-progress"])
    assert r.exit_code == 0, r.output
    (root / "train.out").write_text(r.output)
    return root, data, root / "run"


def test_train_writes_a_resumable_run(trained):
    root, data, run = trained
    closing = (root / "train.out").read_text().strip().splitlines()[-1]
    assert closing.startswith(f"run folder: {run}  (checkpoints/last.pt, checkpoints/best.pt, config.yaml, steps.csv")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["model_name"] == "diffuma" and state["step"] == 2
    assert state["model_config"]["l1_weight"] == 0.5 and state["model_config"]["height"] == 16
    assert {"loss_diff", "loss_rec"} <= set((run / "steps.csv").read_text().splitlines()[0].split(","))
    # Resuming a finished run is a no-op that keeps the step; a fresh start into the same folder is refused.
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(run), "--resume", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--config", "diffuma_tiny", "--out", str(run)])
    assert r.exit_code == 1 and "pass --resume" in r.output


def test_eval_writes_json_and_markdown_with_baseline_row(trained):
    root, data, run = trained
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(data),
                                  "--num-workers", "0"])
    assert r.exit_code == 0, r.output
    result = json.loads((run / "eval" / "eval_last_val_per_pixel.json").read_text())
    assert result["n_sequences"] == 2 and len(result["model"]["per_frame"]) == 5
    assert 0 < result["model"]["overall"]["mse"] < 1 and result["copy_last_frame"]["overall"]["mse"] > 0
    md = (run / "eval" / "eval_last_val_per_pixel.md").read_text()
    assert "| diffuma |" in md and "| copy-last-frame |" in md and "`per_pixel`" in md
    assert "| constant-motion |" in md and len(result["constant_motion"]["per_frame"]) == 5
    assert "| constant-motion |" in r.output  # the console shows the same Markdown
    # per sequence, for one's own tests: the JSON's lists and the CSV hold the same values, whose means are the table's
    import csv

    from chdl.dataset import open_dataset

    assert result["sequences"] == open_dataset(data).indices("val").tolist()
    rows = list(csv.DictReader((run / "eval" / "eval_last_val_per_pixel.csv").open()))
    assert [(int(x["sequence"]), x["row"]) for x in rows] == [
        (i, row) for row in ("diffuma", "copy-last-frame", "constant-motion") for i in result["sequences"]]
    for row, key in (("diffuma", "model"), ("copy-last-frame", "copy_last_frame"), ("constant-motion", "constant_motion")):
        for m in ("mse", "mae", "ssim", "psnr"):
            values = [float(x[m]) for x in rows if x["row"] == row]
            assert values == result[key]["per_sequence"][m]  # (exact: repr round-trips)
            if m != "psnr":  # (PSNR's overall is per frame, not the mean of the sequences' means)
                assert abs(sum(values) / len(values) - result[key]["overall"][m]) < 1e-9
    assert result["model"]["per_sequence"]["mse"] != result["copy_last_frame"]["per_sequence"]["mse"]
    # An earlier evaluation is not replaced silently (as predict): --overwrite replaces it.
    before = (run / "eval" / "eval_last_val_per_pixel.json").read_bytes()
    args = ["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(data), "--num-workers", "0", "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "eval_last_val_per_pixel.json: an earlier evaluation is there (use --overwrite" in r.output
    assert (run / "eval" / "eval_last_val_per_pixel.json").read_bytes() == before
    r = CliRunner().invoke(main, args + ["--overwrite"])
    assert r.exit_code == 0, r.output
    # a subset, other weights and another checkpoint of the run get their own files beside it
    r = CliRunner().invoke(main, args + ["--max-sequences", "1", "--weights", "model"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "eval_last_model_val_per_pixel_first1.json").read_text())["n_sequences"] == 1
    other = run / "checkpoints" / "step2.pt"
    other.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(other), "--data", str(data), "--num-workers", "0",
                                  "--max-sequences", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "eval_step2_val_per_pixel_first1.json").read_text())["checkpoint"].endswith("step2.pt")
    assert json.loads((run / "eval" / "eval_last_val_per_pixel.json").read_text())["n_sequences"] == 2
    # --max-sequences at or above the split's size scores all of it: no _first<N> (it named 100 for 2 scored)
    r = CliRunner().invoke(main, args + ["--max-sequences", "100", "--weights", "model"])
    assert r.exit_code == 0 and (run / "eval" / "eval_last_model_val_per_pixel.json").is_file(), r.output
    assert not list((run / "eval").glob("*first100*"))
    # several runs' evaluations in one --out folder: each file names its run (two runs' last.pt collided there)
    shared = root / "shared"
    for r_ in (run, root / "copy"):
        if r_ != run:
            (r_ / "checkpoints").mkdir(parents=True, exist_ok=True)
            (r_ / "checkpoints" / "last.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
        r = CliRunner().invoke(main, ["eval", "--checkpoint", str(r_ / "checkpoints" / "last.pt"), "--data", str(data),
                                      "--num-workers", "0", "--max-sequences", "1", "--out", str(shared), "-q"])
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in shared.glob("*.json")) == ["eval_copy_last_val_per_pixel_first1.json",
                                                              f"eval_{run.name}_last_val_per_pixel_first1.json"]
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(data),
                                  "--out", str(shared / "eval_copy_last_val_per_pixel_first1.json"), "-q"])
    assert r.exit_code == 1 and "is a file, not a folder for the evaluation" in r.output
    # another dataset gets its name in the file (it was "an earlier evaluation is there", and --overwrite destroyed
    # the run's own); a copy of the training dataset is the same dataset
    other_data = write_moving_square_dataset(root / "other.zarr", n=6, n_val=2, seed=5)
    r = CliRunner().invoke(main, args[:4] + [str(other_data)] + args[5:])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "eval_last_val_per_pixel_on-other.json").read_text())["data"] == str(other_data)
    import shutil

    shutil.copytree(data, root / "copy.zarr")
    r = CliRunner().invoke(main, args[:4] + [str(root / "copy.zarr")] + args[5:])
    assert r.exit_code == 1 and "eval_last_val_per_pixel.json: an earlier evaluation is there" in r.output
    # a dataset the checkpoint cannot take is said so first, not hidden behind an earlier evaluation's name
    small = write_moving_square_dataset(root / "small.zarr", n=6, n_val=2, h=12, w=12)
    (run / "eval" / "eval_last_val_per_pixel_on-small.json").write_text("{}")
    r = CliRunner().invoke(main, args[:4] + [str(small)] + args[5:])
    assert r.exit_code == 1 and "earlier evaluation" not in r.output and "12" in r.output, r.output


def test_eval_records_what_its_numbers_come_from_and_notes_what_a_reader_must_know(trained, tmp_path):
    """A cited number must be traceable: the eval JSON named the checkpoint and dataset only by the paths typed
    (two datasets of other content gave the same JSON), no code version, no batch size or device. best.pt scored on
    the split that chose it, and a dataset declaring other frame counts than the model's, passed without a word."""
    from chdl.provenance import code_fingerprint
    from diffuma.training.checkpoint import file_digest

    root, data, run = trained
    best = run / "checkpoints" / "best.pt"
    assert torch.load(best, weights_only=True)["selected"] == {"by": "validation MSE", "split": "val",
                                                                "max_sequences": 8}  # (diffuma_tiny)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "selected" not in state and state["code"]["code"] == code_fingerprint() and state["code"]["torch"]
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(best), "--data", str(data), "--num-workers", "0",
                                  "--out", str(tmp_path / "e"), "-q"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "e" / f"eval_{run.name}_best_val_per_pixel.json").read_text())
    assert result["checkpoint_blake3"] == file_digest(best)[0] and result["data_path"] == str(data.resolve())
    assert result["data_identity"] == state["data"]["identity"] and result["data_identity"]["content"]
    assert (result["max_value"], result["frame_offset"], result["batch_size"], result["device"], result["precision"]) \
        == (255.0, 0, 2, "cpu", "float32")
    assert result["code"]["code"] == code_fingerprint() and result["trained_with"] == state["code"]
    assert result["notes"] == ["only 2 sequences scored: too few for a figure to cite (see the confidence half-widths)",
                               "this checkpoint was chosen by its validation MSE on this split (best.pt): its numbers "
                               "here are optimistic; cite a checkpoint chosen otherwise, e.g. last.pt (as chdl bench "
                               "does)"]
    assert f"note: {result['notes'][1]}" in r.output
    # how far each mean could move with other sequences: a 95 % t-interval over the 2 scored
    assert all(v > 0 for v in result["model"]["ci95"].values())
    md = (tmp_path / "e" / f"eval_{run.name}_best_val_per_pixel.md").read_text()
    assert "95 % confidence half-widths of these means over the 2 sequences" in md and "diffuma MSE ±" in md
    assert "Paired, sequence by sequence (diffuma − baseline, 95 % t-interval of the mean difference): against " \
           "copy-last-frame: MSE lower on " in md and result["paired"]["constant_motion"]["mse"]["n"] == 2
    assert f"**Note:** {result['notes'][1]}" in md and f"BLAKE3 {result['checkpoint_blake3'][:16]}" in md
    # the same frames declaring 3 -> 7: scored 5 -> 5 as the model predicts, and said so; another split: no best note
    declared = write_moving_square_dataset(tmp_path / "d37.zarr", n=6, n_val=2, in_frames=3, out_frames=7, seed=3)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(best), "--data", str(declared), "--num-workers", "0",
                                  "--split", "train", "--out", str(tmp_path / "e"), "-q"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "e" / f"eval_{run.name}_best_train_per_pixel_on-d37.json").read_text())
    assert result["notes"][1:] == ["the dataset declares 3->7 frames; this checkpoint predicts 5->5, and was scored so: "
                                   "not the dataset's own protocol"]


def test_eval_notes_a_checkpoint_trained_at_another_max_value(trained):
    """A model trained on a Mono16 dataset of 12-bit data (max_value 65535, intensities 0-0.06) evaluated on its
    12-bit re-curation (4095) gave a normal table and no word of the different scaling."""
    import torch

    from diffuma.evaluation import evaluation_record
    from diffuma.training.checkpoint import load_checkpoint

    root, data, run = trained
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    def notes():  # (but "only 2 sequences scored")
        return evaluation_record(state, run, data, "val", batch_size=2, device=torch.device("cpu"),
                                 max_sequences=None)["notes"][1:]

    assert notes() == []
    state["data"]["max_value"] = 65535.0
    assert notes() == [
        "this checkpoint was trained on frames scaled by max_value 65535; this dataset is scaled by 255: its "
        "intensities in [0, 1] are not the ones the model learned"]


def test_eval_notes_sequences_the_checkpoint_was_trained_on(trained, tmp_path):
    """The same recording curated again with another split put 14 of 24 training lanes into "val", and eval scored
    them as validation without a word; so did --split train. The checkpoint records where its training sequences
    came from, and eval counts those it scores."""
    from diffuma.evaluation import evaluation_record
    from diffuma.training.checkpoint import load_checkpoint

    root, data, run = trained
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert len(state["data"]["train_sequences"]) == 4  # (n=6, n_val=2)

    def notes(dataset, split="val"):  # (but "only N sequences scored": these are tiny)
        return [n for n in evaluation_record(state, run, dataset, split, batch_size=2, device=torch.device("cpu"),
                                             max_sequences=None)["notes"] if not n.startswith("only ")]

    assert notes(data) == []
    resplit = write_moving_square_dataset(tmp_path / "resplit.zarr", n=6, split=[1, 0, 1, 0, 0, 1])
    assert notes(resplit) == ["2 of the 3 sequences scored here were training sequences of this checkpoint (the same "
                              "recording, lane and capture times): its numbers here are optimistic"]
    assert notes(data, "train")[0].startswith("4 of the 4 sequences scored here were training sequences")
    assert notes(write_moving_square_dataset(tmp_path / "other.zarr", n=6, seed=5)) == []  # other captures
    # --max-sequences: the notes are about the sequences scored, not the whole split
    first2 = evaluation_record(state, run, data, "train", batch_size=2, device=torch.device("cpu"), max_sequences=2)
    assert first2["sequences"] == [0, 1] and first2["notes"][0].startswith("only 2 sequences scored")
    assert first2["notes"][1].startswith("2 of the 2 sequences scored here were training sequences")
    # best.pt was chosen on val: said for val of this dataset, and for no other split
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    chosen = {split: [n for n in evaluation_record(best, run, data, split, batch_size=2, device=torch.device("cpu"),
                                                   max_sequences=None)["notes"] if n.startswith("this checkpoint was chosen")]
              for split in ("val", "train", "all")}
    assert len(chosen["val"]) == 1 and chosen["train"] == chosen["all"] == []
    # a replay of the recording curated the same way: other capture times (the keys cannot tell), the same data
    replay = write_moving_square_dataset(tmp_path / "replay.zarr", n=6, n_val=2, captured_later_ns=10**15)
    from chdl.dataset import open_dataset
    from diffuma.training.data import dataset_info, dataset_mismatch

    assert open_dataset(replay).identity()["data"] == open_dataset(data).identity()["data"]
    assert notes(replay) == [] and notes(replay, "all")[0].startswith("scored on the all split of the dataset this "
                                                                      "checkpoint was trained on (or a copy of its data)")
    assert dataset_mismatch(state["data"], dataset_info(replay)) is None  # (a resume on it is a resume on its data)
    state["data"].pop("train_sequences")  # a checkpoint from before chdl recorded them: the split is all it knows
    assert notes(data, "all") == ["scored on the all split of the dataset this checkpoint was trained on (or a copy "
                                  "of its data): its training sequences are among them, so its numbers here are "
                                  "optimistic"]
    assert notes(data) == []


def test_eval_records_the_digest_of_the_bytes_it_loaded(trained, tmp_path):
    """The eval JSON's checkpoint_blake3 was a second read of the file after the evaluation: a last.pt that a
    running training replaced meanwhile was recorded with the new file's digest beside the old file's numbers."""
    import shutil

    from diffuma.evaluation import evaluate_checkpoint
    from diffuma.training.checkpoint import LOADED_DIGEST, file_digest, load_checkpoint, save_checkpoint

    root, data, run = trained
    ck = tmp_path / "last.pt"
    shutil.copy(run / "checkpoints" / "last.pt", ck)
    shutil.copy(run / "checkpoints" / "last.pt.checksum.json", tmp_path / "last.pt.checksum.json")
    loaded = file_digest(ck)[0]
    state = load_checkpoint(ck)
    assert state[LOADED_DIGEST] == loaded
    save_checkpoint(ck, {**state, "step": state["step"] + 1})  # training writes the next last.pt
    assert file_digest(ck)[0] != loaded and LOADED_DIGEST not in torch.load(ck, weights_only=True)
    result = evaluate_checkpoint(ck, data, state=state, max_sequences=2)
    assert result["checkpoint_blake3"] == loaded and result["step"] == state["step"]


def test_a_test_split_is_never_trained_on_and_eval_scores_it_without_a_note(tmp_path):
    from chdl.dataset import SPLIT_TEST, open_dataset

    data = write_moving_square_dataset(tmp_path / "t.zarr", n=8, split=[0, 0, 0, 0, 1, 1, SPLIT_TEST, SPLIT_TEST])
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--config", "diffuma_tiny", "--out", str(run),
                                  "--set", "run.max_steps=1", "--set", "run.batch_size=2", "--no-progress"])
    assert r.exit_code == 0, r.output
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    reader = open_dataset(data)
    assert state["data"]["n_train"] == 4 and set(state["data"]["train_sequences"]) == set(
        reader.sequence_keys(reader.indices("train")))  # (the model saw the train split only)
    assert (state["samples_seen"], state["step"]) == (2, 1)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(data),
                                  "--split", "test", "--num-workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    result = json.loads((run / "eval" / "eval_last_test_per_pixel.json").read_text())
    assert result["split"] == "test" and result["sequences"] == [6, 7]
    assert not [n for n in result["notes"] if "optimistic" in n], result["notes"]  # (held out: nothing to warn of)
    # a dataset curated without a test split: eval, predict and bench say how to make one, in the same words
    plain = write_moving_square_dataset(tmp_path / "plain.zarr", n=8)
    want = (f"Error: {plain}: the 'test' split has no sequences (curate with split.test_fraction above 0 to hold one "
            "out: docs/curation.md, \"Split\"; or chdl import video --test-fraction; the other imports make train and "
            "val splits only)")
    ckpt = str(run / "checkpoints" / "last.pt")
    for args in (["eval", "--checkpoint", ckpt, "--data", str(plain), "--out", str(tmp_path / "e")],
                 ["predict", "--checkpoint", ckpt, "--input", str(plain), "--out", str(tmp_path / "p")],
                 ["bench", "--data", str(plain), "--models", "simvp", "--epochs", "1", "--out", str(tmp_path / "b")]):
        r = CliRunner().invoke(main, [*args, "--split", "test", "-q"])
        assert r.exit_code == 1 and r.output.strip() == want, (args[0], r.output)
    # a checkpoint that does not record its training sequences knows only the split: test is held out like val
    from diffuma.evaluation import evaluation_record
    from diffuma.training.checkpoint import load_checkpoint

    old = load_checkpoint(run / "checkpoints" / "last.pt")
    old["data"].pop("train_sequences")
    notes = {split: [n for n in evaluation_record(old, run, data, split, batch_size=2, device=torch.device("cpu"),
                                                  max_sequences=None)["notes"] if "optimistic" in n]
             for split in ("test", "all")}
    assert notes["test"] == [] and notes["all"][0].startswith("scored on the all split of the dataset this checkpoint")


def test_predict_from_dataset_and_from_raw_recording(trained):
    root, data, run = trained
    ckpt = str(run / "checkpoints" / "last.pt")
    out = root / "preds"
    r = CliRunner().invoke(main, ["predict", "--checkpoint", ckpt, "--input", str(data), "--out", str(out),
                                  "--max-sequences", "1"])
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(out / "predictions.zarr"), mode="r")
    assert g.attrs["models"] == ["diffuma"] and g.attrs["sequence_ids"] == ["4"]  # the first val sequence
    from diffuma.training.checkpoint import file_digest

    assert g.attrs["checkpoint_blake3"] == [file_digest(ckpt)[0]]  # what the predictions came from (it was not said)
    from chdl.dataset import open_dataset  # ... and on what: the input wherever it lies (a relative path did not say)

    assert g.attrs["source_resolved"] == str(data.resolve())
    assert g.attrs["source_identity"] == open_dataset(data).identity()
    assert g["prediction/diffuma"].shape == (1, 5, 1, 16, 16) and g["target"].shape == (1, 5, 1, 16, 16)
    pngs = sorted((out / "frames" / "diffuma" / "seq_4").glob("*.png"))
    assert len(pngs) == 5 and np.asarray(Image.open(pngs[0])).shape == (16, 16)
    gif = Image.open(out / "gifs" / "seq_4.gif")
    assert gif.n_frames == 10 and gif.size[0] == 4 * 160 + 4 * 4 + 64  # input | truth | prediction | error | bar
    assert (out / "grids" / "seq_4.png").is_file()
    assert "warning" not in r.output
    # a checkpoint trained at another max_value: said (as eval notes it), the predictions still made
    import torch

    state = torch.load(ckpt, weights_only=True)
    state["data"]["max_value"] = 4095.0
    torch.save(state, root / "at4095.pt")
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(root / "at4095.pt"), "--input", str(data), "--out",
                                  str(root / "p4095"), "--max-sequences", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert f"warning: {root / 'at4095.pt'} was trained on frames scaled by max_value 4095; {data} is scaled by 255" \
        in r.output

    # Two checkpoints (the same run twice here) predict the same sequences side by side.
    r = CliRunner().invoke(main, ["predict", "--checkpoint", ckpt, "--checkpoint", ckpt, "--input", str(data),
                                  "--out", str(root / "two"), "--max-sequences", "1"])
    assert r.exit_code == 0, r.output
    g2 = zarr.open_group(str(root / "two" / "predictions.zarr"), mode="r")
    assert g2.attrs["models"] == ["diffuma@run.last#1", "diffuma@run.last#2"]  # the same model twice: each one named
    np.testing.assert_array_equal(g2["prediction/diffuma@run.last#2"][:], g["prediction/diffuma"][:])
    from chdl.cli.train import _prediction_labels
    assert _prediction_labels([Path("a/checkpoints/best.pt"), Path("b/checkpoints/last.pt"), Path("c/checkpoints/x.pt")],
                              ["diffuma", "diffuma", "simvp"]) == ["diffuma@a", "diffuma@b", "simvp"]
    # best.pt and last.pt of one run are told apart by their files (they were "diffuma@run#1" and "#2")
    assert _prediction_labels([Path("r/checkpoints/best.pt"), Path("r/checkpoints/last.pt")], ["diffuma", "diffuma"]) \
        == ["diffuma@r.best", "diffuma@r.last"]
    # checkpoints outside a run folder are named by their file (it took the folder above theirs: "simvp@trial13a")
    assert _prediction_labels([Path("ck/copy.pt"), Path("ck/other.pt")], ["simvp", "simvp"]) == ["simvp@copy",
                                                                                                "simvp@other"]
    assert Image.open(root / "two" / "gifs" / "seq_4.gif").size[0] == 6 * 160 + 6 * 4 + 64

    # A raw recording: 12 frames of one lane, one of them dropped -> windows of 10 consecutive ok frames.
    rec = root / "rec"
    frames = np.asarray(zarr.open_group(str(data), mode="r")["frames"][0, :, 0])  # (10, 16, 16) uint8
    with RecordingWriter.create(rec, {"camera": {}, "settings": {"width": 16, "height": 16, "pixel_format": "Mono8",
                                                                 "fps": 5}, "plan": {}}) as w:
        for i in range(12):
            meta = dict(lane=0, position_index=i, position_um=10.0 * i, frame_id=i, device_timestamp_ns=None,
                        host_wall_ns=i, host_monotonic_ns=i)
            w.append(None if i == 1 else frames[(i - 2) % 10], **meta)
    r = CliRunner().invoke(main, ["predict", "--checkpoint", ckpt, "--input", str(rec), "--out", str(root / "p2")])
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(root / "p2" / "predictions.zarr"), mode="r")
    assert g.attrs["sequence_ids"] == ["lane0_frame000002"]
    np.testing.assert_allclose(g["input"][0, :, 0], frames[:5] / 255.0, atol=1e-6)
    np.testing.assert_allclose(g["target"][0, :, 0], frames[5:] / 255.0, atol=1e-6)
    assert "warning" not in r.output  # a complete recording
    # a recording whose capture was cut off (never closed): predicted from, with a warning as curate gives
    cut = root / "cut"
    shutil.copytree(rec, cut)
    manifest = json.loads((cut / "manifest.json").read_text())
    (cut / "manifest.json").write_text(json.dumps({**manifest, "status": "recording"}))
    r = CliRunner().invoke(main, ["predict", "--checkpoint", ckpt, "--input", str(cut), "--out", str(root / "p4")])
    assert r.exit_code == 0, r.output
    assert f"warning: {cut / 'manifest.json'}: run is 'recording', not complete; predicting from the frames it holds" in r.output
    r = CliRunner().invoke(main, ["predict", "--checkpoint", ckpt, "--input", str(rec), "--out", str(root / "p2")])
    assert r.exit_code == 1 and "already exists" in r.output
    # A folder of runs (what curate takes) is not one recording: the message says what to do.
    runs = root / "runs"
    runs.mkdir()
    rec.rename(runs / "rec")
    r = CliRunner().invoke(main, ["predict", "--checkpoint", ckpt, "--input", str(runs), "--out", str(root / "p3")])
    assert r.exit_code == 1 and "a folder of 1 raw recording;" in r.output and f"chdl curate {runs} OUT.zarr" in r.output
    assert not (root / "p3").exists()


def test_empty_validation_split_warns_and_the_closing_message_lists_only_written_files(standin, tmp_path):
    data = write_moving_square_dataset(tmp_path / "d.zarr", n=4, n_val=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: standin, preset: tiny}\nrun: {epochs: 1, batch_size: 2, num_workers: 0}\n")
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--config", str(cfg), "--out", str(tmp_path / "run"),
                                  "-q"])
    assert r.exit_code == 0, r.output
    assert f"warning: {data} has no validation sequences: training without validation" in r.output
    assert r.output.strip().splitlines()[-1] == (f"run folder: {tmp_path / 'run'}  (checkpoints/last.pt, config.yaml, "
                                                 "steps.csv, epochs.csv" + (", tensorboard)" if (tmp_path / "run" / "tensorboard").exists() else ")"))
    assert not (tmp_path / "run" / "training_dynamics.png").exists()


def test_a_stop_before_the_validation_says_the_resume_validates(standin, tmp_path, monkeypatch):
    """Ctrl-C in an epoch's last step stops before that epoch's validation: exit 130, a line that says the resume
    validates first, and the resume writes that epoch's epochs.csv row."""
    import signal

    from diffuma.training.trainer import Trainer

    data = write_moving_square_dataset(tmp_path / "d.zarr", n=4, n_val=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: standin, preset: tiny}\nrun: {epochs: 3, batch_size: 4, num_workers: 0}\n")
    step = Trainer._train_step

    def ctrl_c_in_epoch_2s_last_step(self, *args):
        if self.step + 1 == 2 * self.steps_per_epoch:
            self._on_stop_signal(signal.SIGINT, None)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", ctrl_c_in_epoch_2s_last_step)
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--config", str(cfg), "--out", str(run), "-q"])
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == \
        "interrupted at step 2, before its validation; rerun with --resume to validate and continue"
    assert [row.split(",")[:2] for row in (run / "epochs.csv").read_text().strip().splitlines()[1:]] == [["1", "1"]]
    monkeypatch.setattr(Trainer, "_train_step", step)
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(run), "--resume", "-q"])
    assert r.exit_code == 0, r.output
    rows = (run / "epochs.csv").read_text().strip().splitlines()[1:]
    assert [row.split(",")[:2] for row in rows] == [["1", "1"], ["2", "2"], ["3", "3"]]


def test_real_cli_reports_config_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "chdl", "train", "--data", str(tmp_path), "--config", "diffuma_tiny",
                        "--set", "run.epocs=3", "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: --set run.epocs=3: run.epocs: unknown key (did you mean 'epochs'?)"
    assert not (tmp_path / "run").exists()
    clip = tmp_path / "clip.mp4"  # footage given as --data, --config forgotten: the data's problem is said first
    clip.write_bytes(b"\0" * 64)
    r = subprocess.run([sys.executable, "-m", "chdl", "train", "--data", str(clip), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith(f"Error: {clip}: not a zarr v3 group") and \
        "named like a video file: chdl import recordings" in r.stderr and "--config" not in r.stderr, r.stderr


def _chdl(*args):
    return subprocess.run([sys.executable, "-m", "chdl", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_a_damaged_or_missing_shard_is_refused_by_name(trained, tmp_path):
    """Through the real CLI: `chdl verify` names a shard file with a flipped byte (exit 1) and passes a clean
    dataset; eval, train and predict refuse the damaged shard by name; a deleted shard file is refused by name
    when the dataset is opened, and `chdl info` says the dataset is damaged."""
    import shutil

    root, data, run = trained
    ckpt = run / "checkpoints" / "last.pt"
    ok = _chdl("verify", data, "-q")
    assert ok.returncode == 0 and ok.stdout == f"{data}: 2 shards, 14 files, 0.0 MiB: every checksum matches\n", ok.stderr
    bad = tmp_path / "bad.zarr"
    shutil.copytree(data, bad)
    shard = bad / "frames" / "c" / "1" / "0" / "0" / "0" / "0"  # sequences 4-5: the val split
    flipped = bytearray(shard.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    v = _chdl("verify", bad, "-q")
    assert v.returncode == 1 and v.stdout == ("shard 1: frames/c/1/0/0/0/0: checksum mismatch (its BLAKE3 digest differs "
                                              "from the one recorded when it was written)\n")
    assert v.stderr == f"Error: {bad}: 1 of 2 shards damaged (shard 1)\n"
    refusal = (f"Error: {bad}: shard 1 damaged (frames/c/1/0/0/0/0: checksum mismatch (its BLAKE3 digest differs from "
               f"the one recorded when it was written)); the dataset is damaged on disk (chdl verify {bad} lists every "
               "bad file)\n")
    e = _chdl("eval", "--checkpoint", ckpt, "--data", bad, "--out", tmp_path / "ev", "-q")
    assert e.returncode == 1 and e.stderr == refusal and not (tmp_path / "ev").exists()
    t = _chdl("train", "--data", bad, "--config", "diffuma_tiny", "--out", tmp_path / "run", "-q")
    assert t.returncode == 1 and t.stderr == refusal and not (tmp_path / "run").exists()
    p = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), "--input", str(bad), "--out", str(tmp_path / "p"),
                                  "-q"])
    assert p.exit_code == 1 and p.output == refusal and not (tmp_path / "p").exists()
    b = _chdl("bench", "--data", bad, "--models", "simvp", "--epochs", "1", "--preset", "tiny", "--out", tmp_path / "b", "-q")
    assert b.returncode == 1 and b.stderr == refusal and not (tmp_path / "b").exists()  # it trained on it before
    edited = tmp_path / "edited.zarr"  # a byte order edited in an array's metadata: no shard file changed
    shutil.copytree(data, edited)
    meta = edited / "position_um" / "zarr.json"
    meta.write_text(meta.read_text().replace('"endian": "little"', '"endian": "big"', 1))
    v = _chdl("verify", edited, "-q")
    assert v.returncode == 1 and v.stderr == f"Error: {edited}: metadata damaged (position_um/zarr.json)\n", v.stderr
    assert v.stdout.startswith("metadata: position_um/zarr.json: changed since the dataset was made")
    e = _chdl("eval", "--checkpoint", ckpt, "--data", edited, "--out", tmp_path / "ev", "-q")
    assert e.returncode == 1 and e.stderr.startswith(f"Error: {edited}: metadata damaged (position_um/zarr.json: "
                                                     "changed since the dataset was made") and not (tmp_path / "ev").exists()
    gone = tmp_path / "gone.zarr"
    shutil.copytree(data, gone)
    (gone / "frames" / "c" / "0" / "0" / "0" / "0" / "0").unlink()
    refusal = (f"Error: {gone}: missing shard file frames/c/0/0/0/0/0 (shard 0); the dataset is damaged on disk "
               "(restore the file or recreate the dataset)\n")
    e = _chdl("eval", "--checkpoint", ckpt, "--data", gone, "--split", "train", "--out", tmp_path / "ev", "-q")
    assert e.returncode == 1 and e.stderr == refusal
    t = _chdl("train", "--data", gone, "--config", "diffuma_tiny", "--out", tmp_path / "run", "-q")
    assert t.returncode == 1 and t.stderr == refusal
    i = CliRunner().invoke(main, ["info", str(gone)])
    assert i.exit_code == 1 and "integrity    DAMAGED: 1 shard file(s) missing, shard(s) 0" in i.output
    assert i.output.endswith(f"Error: {gone}: damaged: 1 shard file(s) missing (first: frames/c/0/0/0/0/0)\n")


def test_a_forced_scan_backend_that_cannot_run_is_one_line_before_training(trained, tmp_path):
    """CHDL_SCAN_BACKEND=triton (or fused) on a CPU: one line, exit 1, before a run folder is written; eval the
    same (the scan would only fail at the first forward pass otherwise, with a traceback)."""
    root, data, run = trained
    env = {**os.environ, "CHDL_SCAN_BACKEND": "triton", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "chdl", "train", "--data", str(data), "--config", "diffuma_tiny",
                        "--set", "run.max_steps=1", "--set", "run.num_workers=0", "--out", str(tmp_path / "run"), "-q"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip() == ("Error: scan backend 'triton' was forced but cannot run: tensors are cpu/torch.float32, "
                                "the Triton kernel needs CUDA and fp32/fp16/bf16")
    assert not (tmp_path / "run" / "config.yaml").exists()
    r = subprocess.run([sys.executable, "-m", "chdl", "eval", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                        "--data", str(data), "--out", str(tmp_path / "ev"), "-q"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "'triton' was forced" in r.stderr


def test_eval_and_bench_do_not_write_into_the_dataset(trained, tmp_path):
    """`--out` the dataset itself (or a folder in it): bench wrote 1.4 GB of runs and eval its reports into it."""
    root, data, run = trained
    ckpt = run / "checkpoints" / "last.pt"
    e = _chdl("eval", "--checkpoint", ckpt, "--data", data, "--out", data, "-q")
    assert e.returncode == 1 and e.stderr == f"Error: {data}: is the input {data}; choose another --out\n"
    e = _chdl("eval", "--checkpoint", ckpt, "--data", data, "--out", data / "ev", "-q")
    assert e.returncode == 1 and e.stderr == f"Error: {data / 'ev'}: is inside the input {data}; choose another --out\n"
    b = _chdl("bench", "--data", data, "--models", "simvp", "--epochs", "1", "--preset", "tiny", "--out", data, "-q")
    assert b.returncode == 1 and b.stderr == f"Error: {data}: is the input {data}; choose another --out\n"
    other = tmp_path / "other.zarr"
    write_moving_square_dataset(other, n=4, n_val=2)
    e = _chdl("eval", "--checkpoint", ckpt, "--data", data, "--out", other, "-q")
    assert e.returncode == 1 and e.stderr == (f"Error: {other}: a dataset (it holds zarr.json), not an output folder; "
                                              "choose another --out\n")
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in other.iterdir())  # nothing added


def test_eval_and_predict_refuse_a_checkpoint_whose_model_predicts_nan(trained, tmp_path):
    """A diverged checkpoint (weights NaN) was scored `| diffuma | nan | ...`, bare NaN in the JSON, exit 0, and
    predict wrote garbage PNGs."""
    from diffuma.training.checkpoint import save_checkpoint

    root, data, run = trained
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for weights in (state["model"], state["ema"] or {}):
        for v in weights.values():
            if v.is_floating_point():
                v.fill_(float("nan"))
    bad = tmp_path / "diverged.pt"
    save_checkpoint(bad, state)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(bad), "--data", str(data), "--num-workers", "0",
                                  "--out", str(tmp_path / "e"), "-q"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"Error: {bad}: its model predicts NaN or infinite values (2 of 2 sequences of a batch): its weights diverged; "
        "train again with a lower run.lr, run.warmup_steps or run.grad_clip"], r.output
    assert not (tmp_path / "e").exists() or not list((tmp_path / "e").glob("*.json"))
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(bad), "--input", str(data), "--out",
                                  str(tmp_path / "p"), "-q"])
    assert r.exit_code == 1 and "its model predicts NaN or infinite values" in r.output and not (tmp_path / "p").exists()


def test_eval_takes_the_convention_as_bench_does(trained, tmp_path):
    """bench took --convention openstl, eval --openstl: each refused the other's spelling. eval takes --convention
    now (--openstl kept as the older spelling of the same)."""
    root, data, run = trained
    args = ["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(data), "--num-workers", "0",
            "--out", str(tmp_path), "-q"]
    r = CliRunner().invoke(main, [*args, "--convention", "openstl"])
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / f"eval_{run.name}_last_val_openstl.json").read_text())
    assert first["convention"] == "openstl" and first["model"]["overall"]["mse"] > 1  # (summed over C*H*W)
    r = CliRunner().invoke(main, [*args, "--openstl", "--overwrite"])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / f"eval_{run.name}_last_val_openstl.json").read_text())
    assert again["model"]["overall"] == first["model"]["overall"]
    r = CliRunner().invoke(main, [*args, "--openstl", "--convention", "per_pixel"])
    assert r.exit_code == 2 and "--openstl and --convention per_pixel contradict each other" in r.output

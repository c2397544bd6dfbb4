"""The run folder of `chdl train`: a resume on another dataset is refused (a moved or copied one resumes), one
trainer at a time holds the folder, a checkpoint that cannot be written is one line and leaves no temporary file
(and a killed write's leftovers are removed), and a --out that cannot be a run folder is one line."""

import os
import re
import shutil
import signal
import subprocess

import pytest
import torch
import yaml
from click.testing import CliRunner

from chdl.cli import main
from diffuma.training import train_from_config
from diffuma.training.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint, verify_checksum
from diffuma.training.config import ConfigError
from dataset_helpers import as_written_before_checksums
from train_helpers import standin_cli, write_moving_square_dataset


def _config(**run):
    base = {"epochs": 2, "batch_size": 3, "num_workers": 0, "lr": 3e-3, "checkpoint_every_steps": 1,
            "val_every_epochs": 0}
    return {"model": {"name": "standin", "preset": "tiny"}, "run": {**base, **run}}


def _train(args):
    r = CliRunner().invoke(main, ["train", *map(str, args), "-q"])
    return r.exit_code, r.output.strip()


@pytest.fixture
def stopped_run(standin, tiny_dataset, tmp_path):
    """A run of 6 steps killed (simulated) after 2 of them: last.pt holds step 2."""
    from diffuma.training.trainer import build_trainer

    build_trainer(_config(), tiny_dataset, tmp_path / "run", progress=False).fit(stop_after_steps=2)
    return tmp_path / "run"


def test_resume_refuses_another_dataset_and_accepts_a_moved_copy(stopped_run, tiny_dataset, tmp_path):
    other = write_moving_square_dataset(tmp_path / "other.zarr", seed=1)  # the same shape, other sequences
    code, msg = _train(["--data", other, "--out", stopped_run, "--resume"])
    assert code == 1 and "\n" not in msg, msg
    assert msg == (f"Error: {other}: not the dataset this run was made with ({tiny_dataset}): its content differs (the "
                   "shard checksums recorded in the two datasets are not the same); resume with --data "
                   f"{tiny_dataset} (or a copy of it), or start a new --out")
    assert load_checkpoint(stopped_run / "checkpoints" / "last.pt")["step"] == 2  # nothing trained or written
    # Without shard checksums (a dataset from before chdl recorded them) the creation time tells them apart.
    as_written_before_checksums(other)
    code, msg = _train(["--data", other, "--out", stopped_run, "--resume"])
    assert code == 1 and "not the dataset this run was made with" in msg and " created " in msg, msg
    # The same dataset moved elsewhere resumes (the path is not what identifies it) and the run records the new path.
    moved = tmp_path / "moved" / "squares.zarr"
    shutil.copytree(tiny_dataset, moved)
    code, msg = _train(["--data", moved, "--out", stopped_run, "--resume"])
    assert code == 0, msg
    state = load_checkpoint(stopped_run / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["data"]["path"] == str(moved.resolve())


def test_a_checkpoint_without_a_dataset_identity_resumes_with_a_warning_when_the_path_differs(stopped_run, tiny_dataset,
                                                                                              tmp_path, capsys):
    """Checkpoints from before chdl recorded the dataset's identity are compared by frame size, max_value and path.
    (A run trained on a Mono16 dataset at max_value 65535 resumed on its 12-bit re-curation at 4095 with only the
    path warning, and the checkpoint then recorded 4095.)"""
    from diffuma.training.checkpoint import checksum_path

    ck = stopped_run / "checkpoints" / "last.pt"
    original = torch.load(ck, weights_only=True)
    moved = tmp_path / "moved.zarr"
    shutil.copytree(tiny_dataset, moved)
    for key, value, why in (("max_value", 4095.0, "max_value 4095.0 vs 255.0"), ("height", 32, "frames 1x32x16 vs 1x16x16 (C,H,W)")):
        state = {**original, "data": {**original["data"], key: value}}
        del state["data"]["identity"]
        torch.save(state, ck)
        checksum_path(ck).unlink(missing_ok=True)
        with pytest.raises(ConfigError, match=re.escape(f"not the dataset this run was made with ({tiny_dataset}): {why}")):
            train_from_config(None, moved, stopped_run, resume=True, progress=False)
    state = {**original, "data": {k: v for k, v in original["data"].items() if k != "identity"}}
    torch.save(state, ck)
    train_from_config(None, moved, stopped_run, resume=True, progress=False)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "warning: the run's checkpoint does not record which dataset it was made with (written before chdl did), only "
        f"its path {tiny_dataset} and its frame size and max_value (the same): cannot check that {moved} is the same data")


def test_a_second_trainer_on_a_run_folder_is_refused_while_the_first_runs(standin, tiny_dataset, tmp_path):
    """Two `chdl train` on one folder: the second (a --resume, or a fresh start) is refused in one line naming
    the first one's pid, and changes nothing; the lock goes with the process, even on SIGKILL."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(epochs=4)))
    run = tmp_path / "run"
    proc = subprocess.Popen(standin_cli("train", "--data", tiny_dataset, "--config", tmp_path / "c.yaml", "--out", run,
                                        "-q", threads=torch.get_num_threads()),
                            env={**os.environ, "STANDIN_STEP_SLEEP": "0.2"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        last = run / "checkpoints" / "last.pt"
        import time

        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        steps = (run / "steps.csv").read_text()
        busy = (f"Error: {run}: the folder is in use by another chdl train (pid {proc.pid}); wait for it to end or "
                "stop it, or choose another --out")
        assert _train(["--data", tiny_dataset, "--out", run, "--resume"]) == (1, busy)
        assert _train(["--data", tiny_dataset, "--config", tmp_path / "c.yaml", "--out", run]) == (1, busy)
        assert (run / "steps.csv").read_text().startswith(steps)  # the second one did not rewrite the log
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    code, msg = _train(["--data", tiny_dataset, "--out", run, "--resume"])  # the killed process holds nothing
    assert code == 0, msg
    assert [r.split(",")[0] for r in (run / "steps.csv").read_text().splitlines()[1:]] == [str(i) for i in range(1, 13)]


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_tmp_file(standin, tiny_dataset, tmp_path):
    """A real `chdl train` whose files may not exceed 8 KiB (RLIMIT_FSIZE: writes fail with EFBIG as they do with
    ENOSPC on a full disk): one line naming the checkpoint and the OS's reason, exit 1, no temporary file."""
    import resource

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config()))
    run = tmp_path / "run"

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    r = subprocess.run(standin_cli("train", "--data", tiny_dataset, "--config", tmp_path / "c.yaml", "--out", run, "-q",
                                   threads=1), capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert r.returncode == 1
    assert r.stderr == f"Error: {run}/checkpoints/last.pt: cannot write checkpoint (File too large)\n"
    assert os.listdir(run / "checkpoints") == []


def test_save_checkpoint_failures_are_one_line_and_keep_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def torch_fails(obj, f):  # what torch raises for a full disk when it writes the file itself
        f.write(b"PK\x03\x04 part of an archive")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", torch_fails)
    with pytest.raises(CheckpointWriteError, match=rf"^{path}: cannot write checkpoint \(disk full\?\)$"):
        save_checkpoint(path, {"step": 2})

    def disk_full(obj, f):
        f.write(b"PK\x03\x04")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match=rf"^{path}: cannot write checkpoint \(No space left on device\)$"):
        save_checkpoint(path, {"step": 2})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt", "last.pt.checksum.json"]
    assert path.read_bytes() == before  # the previous checkpoint, untouched, still matching its record
    verify_checksum(path)


def test_a_resume_removes_what_a_killed_write_left(stopped_run, tiny_dataset):
    ckpts = stopped_run / "checkpoints"
    for name in (".last.pt.tmp4242", ".last.pt.checksum.json.tmp4242", ".best.pt.tmp7"):
        (ckpts / name).write_bytes(b"half a checkpoint")
    (stopped_run / ".config.yaml.tmp4242").write_text("model:")
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume"])
    assert code == 0, msg
    assert not [p.name for p in (*ckpts.iterdir(), *stopped_run.iterdir()) if ".tmp" in p.name]


def test_an_out_that_cannot_be_a_run_folder_is_one_line(standin, tiny_dataset, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config()))
    (tmp_path / "afile").write_text("x")
    for out, why in ((tmp_path / "afile" / "run", f"cannot create the run folder: {tmp_path / 'afile'} is a file, "
                                                  "not a folder"),  # (it said "(Not a directory)")
                     (tmp_path / "afile", "cannot create the run folder (a file of that name exists)")):
        assert _train(["--data", tiny_dataset, "--config", cfg, "--out", out]) == (1, f"Error: {out}: {why}")
    # A dataset or a raw recording is not a run folder: nothing is written into them.
    data = tmp_path / "d.zarr"
    shutil.copytree(tiny_dataset, data)
    code, msg = _train(["--data", tiny_dataset, "--config", cfg, "--out", data])
    assert (code, msg) == (1, f"Error: {data}: a dataset (it holds zarr.json), not a run folder; choose another --out")
    code, msg = _train(["--data", data, "--out", data, "--resume"])
    assert (code, msg) == (1, f"Error: {data}: is the input {data}; choose another --out")
    assert not (data / "checkpoints").exists() and not (data / "config.yaml").exists()
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "manifest.json").write_text("{}")
    (rec / "frames.jsonl").write_text("")
    code, msg = _train(["--data", tiny_dataset, "--config", cfg, "--out", rec])
    assert (code, msg) == (1, f"Error: {rec}: a raw recording (it holds manifest.json and frames.jsonl), not a run "
                              "folder; choose another --out")
    assert sorted(p.name for p in rec.iterdir()) == ["frames.jsonl", "manifest.json"]


def test_a_fresh_run_starts_only_in_a_new_empty_or_unfinished_run_folder(standin, tiny_dataset, tmp_path):
    """A fresh run replaced a run that had best.pt but no last.pt (its checkpoints and logs), scattered its files
    among someone's files, and went into its own dataset (where curate --overwrite later deleted it)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config(epochs=1)))
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "best.pt").write_bytes(b"a SimVP run's weights")
    assert _train(["--data", tiny_dataset, "--config", cfg, "--out", old]) == (
        1, f"Error: {old}: already holds a run whose last.pt was never written (checkpoints/best.pt); pass --resume "
           "to continue it from best.pt, or choose another --out")
    assert (old / "checkpoints" / "best.pt").read_bytes() == b"a SimVP run's weights"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("mine")
    code, msg = _train(["--data", tiny_dataset, "--config", cfg, "--out", notes])
    assert (code, msg) == (1, f"Error: {notes}: holds files that are not a chdl run's (README.txt); choose another "
                              "--out (an empty or new folder)")
    assert [p.name for p in notes.iterdir()] == ["README.txt"]
    inside = tiny_dataset / "run"
    code, msg = _train(["--data", tiny_dataset, "--config", cfg, "--out", inside])
    assert (code, msg) == (1, f"Error: {inside}: is inside the input {tiny_dataset}; choose another --out")
    assert not inside.exists()
    # a run killed before its first checkpoint (logs, no checkpoint) starts again in its folder, as before
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("{}")
    (unfinished / "steps.csv").write_text("step\n")
    (unfinished / ".config.yaml.tmp12345").write_text("cut short")  # what a kill mid-write leaves (removed by the run)
    assert _train(["--data", tiny_dataset, "--config", cfg, "--out", unfinished])[0] == 0
    assert (unfinished / "checkpoints" / "last.pt").is_file()


def test_the_folder_is_held_from_the_moment_the_trainer_is_built(standin, tiny_dataset, tmp_path):
    """A --resume (or a fresh start) in the seconds between a trainer's start and its training loop found no lock:
    'nothing to resume', or a second run over the first."""
    from diffuma.training.trainer import build_trainer

    run = tmp_path / "run"
    trainer = build_trainer(_config(), tiny_dataset, run, progress=False)  # built, not yet fitting
    cli = standin_cli("train", "--data", tiny_dataset, "--out", run, "--resume", "-q", threads=1)
    p = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stderr.strip() == (
        f"Error: {run}: the folder is in use by another chdl train (pid {os.getpid()}); wait for it to end or stop it, "
        "or choose another --out"), p.stderr
    trainer.fit()  # the built trainer trains on (its lock is the one it took when built), then lets go
    p = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_is_one_line(standin, tiny_dataset, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config()))
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        code, msg = _train(["--data", tiny_dataset, "--config", cfg, "--out", ro / "run"])
        assert (code, msg) == (1, f"Error: {ro / 'run'}: cannot create the run folder (Permission denied)")
    finally:
        ro.chmod(0o755)


def test_config_errors_found_against_the_data_or_the_machine_name_where_the_value_came_from(standin, tiny_dataset,
                                                                                          tmp_path):
    """'model.height 64 differs from the dataset's 16' and 'run.device is cuda but ...' named no file or option,
    unlike every other config error."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config()))
    code, msg = _train(["--data", tiny_dataset, "--config", cfg, "--set", "model.height=64", "--out", tmp_path / "a"])
    assert code == 1 and msg.startswith("Error: --set model.height=64: model.height 64 differs from the dataset's 16"), msg
    if not torch.cuda.is_available():
        cuda = _config()
        cuda["run"]["device"] = "cuda"
        cfg.write_text(yaml.safe_dump(cuda))
        code, msg = _train(["--data", tiny_dataset, "--config", cfg, "--out", tmp_path / "b"])
        assert (code, msg) == (1, f"Error: {cfg}: run.device is cuda but torch.cuda.is_available() is False"), msg
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_run_whose_first_last_pt_could_not_be_written_resumes_from_best_pt(standin, tiny_dataset, tmp_path,
                                                                             monkeypatch):
    """A full disk after the first epoch's best.pt, before its last.pt: --resume said 'nothing to resume' and a fresh
    start 'already holds a run's checkpoints': the run could be neither continued nor restarted."""
    from pathlib import Path

    from diffuma.training import trainer as trainer_module

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(epochs=2, val_every_epochs=1, checkpoint_every_steps=0)))
    run = tmp_path / "run"
    real, failed = trainer_module.save_checkpoint, []

    def full_disk_once(path, state):
        if Path(path).name == "last.pt" and not failed:
            failed.append(path)
            raise CheckpointWriteError(f"{path}: cannot write checkpoint (No space left on device)")
        real(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", full_disk_once)
    code, msg = _train(["--data", tiny_dataset, "--config", tmp_path / "c.yaml", "--out", run])
    assert code == 1 and "last.pt: cannot write checkpoint (No space left on device)" in msg, msg
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["best.pt"]
    code, msg = _train(["--data", tiny_dataset, "--config", tmp_path / "c.yaml", "--out", run])
    assert code == 1 and "pass --resume to continue it from best.pt" in msg, msg
    code, msg = _train(["--data", tiny_dataset, "--out", run, "--resume"])
    assert code == 0, msg
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def test_a_resume_may_change_how_the_run_is_carried_out_not_what_it_computes(stopped_run, tiny_dataset):
    """--resume --set run.num_workers=2 was refused ("resume with a different config"), though the loader's worker
    count changes no number; a setting that does (lr) is still refused, naming it."""
    config = stopped_run / "config.yaml"
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume", "--config", config,
                        "--set", "run.lr=0.01"])
    assert code == 1 and "resume with a different config (run.lr: saved 0.003 vs given 0.01)" in msg, msg
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume", "--config", config,
                        "--set", "run.num_workers=1", "--set", "run.log_every_steps=2"])
    assert code == 0, msg
    state = load_checkpoint(stopped_run / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["config"]["run"]["num_workers"] == 1


def test_a_checkpoint_from_before_a_model_field_existed_resumes(stopped_run, tiny_dataset):
    """Runs of 11-30 saved no model.up_kernel / time_map / prior_gate (added later); their resume was refused as
    "resume with a different config (model.up_kernel: saved None vs given 4)" with no config given, while eval built
    the same model from the field's default. The missing field now takes its default on resume too."""
    from diffuma.training.checkpoint import checksum_path

    ck = stopped_run / "checkpoints" / "last.pt"
    state = torch.load(ck, weights_only=True)
    assert state["model_config"].pop("nan_at_step") == -1  # as if the field did not exist when the run was made
    torch.save(state, ck)
    checksum_path(ck).unlink(missing_ok=True)
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume"])
    assert code == 0, msg
    assert load_checkpoint(ck)["step"] == 6


def test_a_resume_given_a_preset_value_explicitly_is_the_same_model(stopped_run, tiny_dataset):
    """--set model.X=<the value its preset gives> was refused ("saved None vs given 32"): the model is the same. An
    other value is refused, naming the model field as built."""
    config = stopped_run / "config.yaml"
    assert "hidden" not in yaml.safe_load(config.read_text())["model"]  # the preset's (8)
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume", "--config", config,
                        "--set", "model.hidden=16"])
    assert code == 1 and "resume with a different config (model.hidden: saved 8 vs given 16)" in msg, msg
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume", "--config", config,
                        "--set", "model.hidden=8"])
    assert code == 0, msg


def test_resuming_a_finished_run_says_so_and_changes_nothing(stopped_run, tiny_dataset):
    """A second --resume of a run that had finished exited 0 silently, rewrote config.yaml and added a tensorboard
    events file; it now says there is nothing to resume and leaves every file as it was."""
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume"])
    assert code == 0 and "nothing to resume" not in msg, msg
    def files():  # (but the lock, which every trainer takes)
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in stopped_run.rglob("*")
                if p.is_file() and p.name != ".chdl-train.lock"}

    before = files()
    code, msg = _train(["--data", tiny_dataset, "--out", stopped_run, "--resume"])
    assert code == 0, msg
    assert (f"nothing to resume: {stopped_run} finished at step 6 (2 epochs done); its files are "
            "unchanged") in msg.splitlines()
    assert files() == before

"""Checkpoints that cannot be used are one-line errors naming the file and what is wrong, from `chdl eval`,
`chdl predict` and a resume: another model's name, missing or unexpected keys, a shape mismatch, no
`model` key, wrong types, files torch refuses to unpickle (nothing in them is run), and files that no longer
match the checksum recorded when they were written."""

import collections

import pytest
import torch
from click.testing import CliRunner

from chdl.cli import main
from diffuma.training import train_from_config
from diffuma.training.checkpoint import (CheckpointError, checksum_path, load_checkpoint, save_checkpoint,
                                         verify_checksum)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset):
    from diffuma.models import registry

    mp = pytest.MonkeyPatch()
    mp.setitem(registry.MODELS, "standin", "standin_model:StandIn")
    out = train_from_config({"model": {"name": "standin", "preset": "tiny"},
                             "run": {"epochs": 1, "batch_size": 4, "num_workers": 0, "max_steps": 1}},
                            tiny_dataset, tmp_path_factory.mktemp("ck") / "run", progress=False)
    yield out
    mp.undo()


def _tampered(run, tmp_path, edit):
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    edit(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    return path


def _first_key(state):
    return next(iter(state["model"]))


EDITS = {
    "other model": (lambda s: s.update(model_name="simvp"), "model_name 'simvp' with its model_config cannot be built"),
    "unknown model": (lambda s: s.update(model_name="nope"), "unknown model 'nope'"),
    "missing key": (lambda s: s["model"].pop(_first_key(s)), "model weights do not fit StandIn (missing keys: "),
    "extra key": (lambda s: s["model"].update(extra=torch.zeros(1)), "unexpected keys: extra"),
    "shape": (lambda s: s["model"].update({_first_key(s): torch.zeros(3, 3)}), "shape mismatch (checkpoint vs model): "),
    "no model key": (lambda s: s.pop("model"), "malformed checkpoint (no 'model' key)"),
    "config type": (lambda s: s.update(config=[1]), "malformed checkpoint ('config' must be a dict, not list)"),
    "data": (lambda s: s["data"].update(max_value=0), "malformed checkpoint (data.max_value must be a positive number"),
    # a newer chdl's file says so (it was "not a chdl checkpoint"), another file names what it holds
    "newer format": (lambda s: s.update(format="chdl.checkpoint/2"), "a checkpoint of format chdl.checkpoint/2 (made by "
                     "a newer chdl); this chdl reads chdl.checkpoint/1: upgrade chdl to use it"),
    "other format": (lambda s: s.update(format="x/1"), "not a chdl checkpoint (format 'x/1', expected 'chdl.checkpoint/1')"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_eval_and_predict_refuse_unusable_checkpoints_in_one_line(run, tiny_dataset, tmp_path, standin, case):
    edit, needle = EDITS[case]
    ck = _tampered(run, tmp_path, edit)
    for args in (["eval", "--checkpoint", ck, "--data", tiny_dataset, "--out", tmp_path / "e"],
                 ["predict", "--checkpoint", ck, "--input", tiny_dataset, "--out", tmp_path / "p"]):
        r = CliRunner().invoke(main, list(map(str, args)))
        msg = r.output.strip()
        assert r.exit_code == 1 and msg.startswith(f"Error: {ck}: ") and "\n" not in msg and needle in msg, msg


def test_resume_refuses_weights_that_do_not_fit(run, tiny_dataset, tmp_path, standin):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ck = copy / "checkpoints" / "last.pt"
    state = torch.load(ck, weights_only=True)
    state["model"][_first_key(state)] = torch.zeros(2)
    torch.save(state, ck)
    checksum_path(ck).unlink()  # its checksum record would call the edited file damaged (as it does below)
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--out", str(copy), "--resume", "--no-progress"])
    msg = r.output.strip()
    assert r.exit_code == 1 and msg.startswith(f"Error: {ck}: model weights do not fit") and "\n" not in msg, msg


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _flip_one_tensor_byte(path) -> str:
    """Changes one byte in the middle of the checkpoint's largest tensor storage (zip member <name>/data/<k>);
    returns the member's name."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)  # (a storage)
    data = bytearray(path.read_bytes())
    names, extra = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's two lengths
    data[info.header_offset + 30 + names + extra + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return info.filename


def test_a_damaged_checkpoint_is_refused_by_resume_eval_and_predict(run, tiny_dataset, tmp_path, standin):
    """One flipped byte: the checksum recorded when the checkpoint was written no longer matches (torch alone
    loads such a file without complaint); without its record (an older or copied checkpoint) it loads."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ck = copy / "checkpoints" / "last.pt"
    assert checksum_path(ck).is_file()
    _flip_one_byte(ck)
    torch.load(ck, weights_only=True)  # what went unnoticed
    damaged = (f"Error: {ck}: checksum mismatch: damaged (its BLAKE3 digest differs from the one last.pt.checksum.json "
               "recorded when it was written; if the file was replaced on purpose, delete that record)")
    for args in (["train", "--data", tiny_dataset, "--out", copy, "--resume"],
                 ["eval", "--checkpoint", ck, "--data", tiny_dataset, "--out", tmp_path / "e"],
                 ["predict", "--checkpoint", ck, "--input", tiny_dataset, "--out", tmp_path / "p"]):
        r = CliRunner().invoke(main, [*map(str, args), "-q"])
        assert (r.exit_code, r.output.strip()) == (1, damaged), args
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists()
    ck.write_bytes(ck.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"checksum mismatch: damaged \(\d+ bytes, last.pt.checksum.json "
                                              r"recorded \d+ when it was written; "):
        load_checkpoint(ck)
    # A checkpoint with no record (written before chdl recorded checksums) loads as before.
    legacy = tmp_path / "legacy.pt"
    shutil.copyfile(run / "checkpoints" / "last.pt", legacy)
    assert load_checkpoint(legacy)["step"] == 1
    # ... unless its zip archive's own CRC-32 says a member is damaged (a byte changed in the largest tensor's data,
    # which torch.load takes as it is: eval gave slightly different numbers, exit 0)
    copied = tmp_path / "copied.pt"
    shutil.copyfile(legacy, copied)
    member = _flip_one_tensor_byte(copied)
    torch.load(copied, weights_only=True)  # what went unnoticed
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(copied), "--data", str(tiny_dataset), "--out",
                                  str(tmp_path / "e2"), "-q"])
    assert (r.exit_code, r.output.strip()) == (1, f"Error: {copied}: damaged checkpoint (the CRC-32 of {member} in "
                                                  "its torch zip archive does not match its bytes)"), r.output
    # An unreadable record is named.
    checksum_path(legacy).write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"^{checksum_path(legacy)}: unreadable checksum record of legacy.pt "):
        load_checkpoint(legacy)


def test_a_kill_between_the_record_and_the_rename_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    """save_checkpoint writes the new checksum record before it renames the new file into place; a process killed
    in between leaves the old file with the new record, which still accepts it (it keeps the record it replaced)."""
    import os

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    old = path.read_bytes()

    def killed(src, dst):
        if str(dst) == str(path):
            raise KeyboardInterrupt  # not an error save_checkpoint handles: the process dies here
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old and '"previous": {' in checksum_path(path).read_text()
    verify_checksum(path)
    save_checkpoint(path, {"step": 3})
    verify_checksum(path)
    assert torch.load(path, weights_only=True)["step"] == 3


class Payload:  # a class torch's weights-only unpickler refuses (so its __reduce__ never runs)
    def __reduce__(self):
        return (print, ("ran",))


def test_unpicklable_checkpoint_is_one_line_and_runs_nothing(tmp_path, tiny_dataset, capfd):
    ck = tmp_path / "evil.pt"
    torch.save({"format": "chdl.checkpoint/1", "x": Payload(), "y": collections.OrderedDict()}, ck)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(ck), "--data", str(tiny_dataset), "--out", str(tmp_path / "e")])
    msg = r.output.strip()
    assert r.exit_code == 1 and msg.startswith(f"Error: {ck}: not a loadable checkpoint (not a torch file, or it") \
        and msg.endswith("; UnpicklingError)") and "\n" not in msg, msg
    assert "ran" not in capfd.readouterr().out


def test_truncated_checkpoint_says_truncated(run, tiny_dataset, tmp_path):
    """A checkpoint cut short (a copy or download that stopped) is named as such, in one line."""
    ck = tmp_path / "cut.pt"
    whole = (run / "checkpoints" / "last.pt").read_bytes()
    ck.write_bytes(whole[: len(whole) // 2])
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(ck), "--data", str(tiny_dataset), "--out", str(tmp_path / "e")])
    msg = r.output.strip()
    assert r.exit_code == 1 and msg.startswith(f"Error: {ck}: truncated or damaged checkpoint (") and "\n" not in msg, msg
    assert not (tmp_path / "e").exists()


def test_a_legacy_pickle_is_one_line_without_torchs_warning(tmp_path, recwarn):
    import pickle

    ck = tmp_path / "plain.pt"
    ck.write_bytes(pickle.dumps({"format": "x"}))
    with pytest.raises(CheckpointError, match=r"not a (loadable|chdl) checkpoint"):
        load_checkpoint(ck)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], [str(w.message) for w in recwarn]

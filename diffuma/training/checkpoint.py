"""Checkpoint files: plain tensors, numbers, strings, lists and dicts only, so ``torch.load(weights_only=True)``
opens them (no pickled classes, nothing executed on load).

Keys (format "chdl.checkpoint/1", docs/training.md "Checkpoints"):
    format, chdl_version, config {model, run} (resolved), model_name, model_config (the model dataclass as a
    dict), data {path, in_frames, out_frames, channels, height, width, max_value, pixel_format, identity
    (chdl.dataset.DatasetReader.identity; absent in older checkpoints)},
    model (state_dict), ema (state_dict or None), ema_n_averaged, optimizer, scaler (or None),
    step (optimiser steps done), epoch (current epoch, 0-based), batch_in_epoch (batches of that epoch done),
    rng {torch, cuda, numpy, python} (rank 0), rng_per_rank (every rank's, under torchrun; else None),
    best_val_mse, train_seconds (training time of the steps so far), samples_seen, planned_total_steps (the
    schedule length a run.max_minutes budget planned, diffuma.training.budget; else None), pending_log
    ({epoch, train_loss} of an epoch whose validation a stop left for the resume; else None; absent in older
    checkpoints).

Integrity: every checkpoint written here has a checksum record beside it, ``<name>.checksum.json`` (BLAKE3
digest and size of the file, written atomically before the checkpoint is renamed into place, with the record
it replaces kept as ``previous`` so that a kill between the two renames still leaves a matching pair);
:func:`load_checkpoint` refuses a file that matches neither ("checksum mismatch: damaged"). A checkpoint
without a record (written before chdl recorded them, or copied without it) is checked against its zip archive's
own CRC-32 of every member (torch.load does not check them), which catches damage but not a deliberate edit. The
file is read
once: the bytes checked are the bytes loaded, and the loaded dict carries their digest as ``loaded_blake3`` (not
a key of the file: what an evaluation records, even when training replaces the file meanwhile).
"""

from __future__ import annotations

import io
import json
import os
import random
import warnings
import zipfile
from pathlib import Path

import blake3
import numpy as np
import torch

from acquisition import files
from acquisition.format_versions import newer_format

CHECKPOINT_FORMAT = "chdl.checkpoint/1"
CHECKSUM_SUFFIX = ".checksum.json"  # last.pt -> last.pt.checksum.json
LOADED_DIGEST = "loaded_blake3"  # load_checkpoint's digest of the bytes it loaded; never written to a file


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (disk full, no permission); the message names the file. Nothing
    of the attempt is left behind: the previous checkpoint of that name is kept as it was."""


class _HashingWriter:
    """The file object ``torch.save`` writes to: passes every byte to an unbuffered file (so a full disk is an
    OSError with its errno at the write that failed, not torch's "basic_ios::clear: iostream error") and
    hashes it on the way (no second read of the file). ``error``: the first OSError a write raised (torch may
    replace it by a RuntimeError of its own while it closes the archive); ``interrupted``: a KeyboardInterrupt
    (Ctrl-C) arrived during a write, which torch turns into that RuntimeError too."""

    def __init__(self, file):
        self.file, self.digest, self.size = file, blake3.blake3(), 0
        self.error: OSError | None = None
        self.interrupted = False

    def write(self, data) -> int:
        whole = view = memoryview(data).cast("B")
        try:
            while view:  # an unbuffered write may take only part of the bytes
                view = view[self.file.write(view):]
        except OSError as e:
            self.error = self.error or e
            raise
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        self.digest.update(whole)
        self.size += len(whole)
        return len(whole)

    def flush(self) -> None:
        self.file.flush()


def checksum_path(path: str | Path) -> Path:
    """The checksum record of the checkpoint at ``path``: ``<path>.checksum.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Writes ``state`` atomically (tmp file in the same folder, then os.replace), with its checksum record
    (:func:`checksum_path`) written atomically before the rename. CheckpointWriteError (one line naming ``path``:
    ``cannot write checkpoint (No space left on device)``, or ``(disk full?)`` when the failure has no errno) if
    any of it cannot be written; the temporary files are removed then and the previous checkpoint is kept."""
    path = Path(path)
    record = checksum_path(path)
    writer = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.replacing(path) as tmp:  # (its temporary file is removed on any failure)
            with open(tmp, "wb", buffering=0) as f:
                writer = _HashingWriter(f)
                torch.save({"format": CHECKPOINT_FORMAT, **{k: v for k, v in state.items() if k != LOADED_DIGEST}},
                           writer)
            entry = {"blake3": writer.digest.hexdigest(), "bytes": writer.size}
            files.write_text(record, json.dumps({"file": path.name, **entry, "previous": _current_entry(path)}))
    except (OSError, RuntimeError) as e:  # torch turns some write failures into a RuntimeError of its own
        if writer is not None and writer.interrupted:  # a Ctrl-C, not a write failure (it said "disk full?")
            raise KeyboardInterrupt from None
        cause = e if isinstance(e, OSError) else writer.error if writer is not None else None
        why = cause.strerror if cause is not None and cause.strerror else "disk full?"
        raise CheckpointWriteError(f"{path}: cannot write checkpoint ({why})") from None


def _current_entry(path: Path) -> dict | None:
    """The {blake3, bytes} of the checkpoint now at ``path``, from its record when that is readable, else by
    hashing the file (None if there is none): kept as the new record's ``previous``, so the old file still
    matches if the process dies between writing the record and renaming the new file into place."""
    try:
        old = json.loads(checksum_path(path).read_text())
        return {"blake3": old["blake3"], "bytes": old["bytes"]}
    except (OSError, ValueError, TypeError, KeyError):
        pass
    if not path.is_file():
        return None
    digest, size = file_digest(path)
    return {"blake3": digest, "bytes": size}


def file_digest(path: str | Path) -> tuple[str, int]:
    """(BLAKE3 hex digest, size in bytes) of a file. OSError if it cannot be read."""
    digest = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest(), os.path.getsize(path)


def verify_checksum(path: str | Path, read: tuple[str, int] | None = None) -> bool:
    """Compares the checkpoint at ``path`` with its checksum record (:func:`checksum_path`): CheckpointError
    (one line naming the file: "checksum mismatch: damaged") when it matches neither the recorded digest nor
    the one the record replaced; an unreadable record is an error naming the record. No record: nothing to
    check (checkpoints written before chdl recorded checksums, or copied without their record). ``read``:
    the (BLAKE3 hex digest, size) of the bytes already read from ``path`` (else the file is hashed here).
    True if a record vouched for the file, False if there is none."""
    path = Path(path)
    record = checksum_path(path)
    if not record.is_file():
        return False
    try:
        saved = json.loads(record.read_text())
        accepted = [(e["blake3"], e["bytes"]) for e in (saved, saved.get("previous")) if e is not None]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{record}: unreadable checksum record of {path.name} ({type(e).__name__}); delete "
                              "it to load the checkpoint unverified") from None
    try:
        digest, size = read or file_digest(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    if (digest, size) not in accepted:
        how = (f"{size} bytes, {record.name} recorded {saved['bytes']} when it was written" if size != saved["bytes"]
               else f"its BLAKE3 digest differs from the one {record.name} recorded when it was written")
        raise CheckpointError(f"{path}: checksum mismatch: damaged ({how}; if the file was replaced on purpose, "
                              "delete that record)")
    return True


def load_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint on the CPU with ``weights_only=True``; CheckpointError if unreadable, foreign, or
    damaged (its checksum record disagrees: :func:`verify_checksum`). The file is read once; the dict returned
    carries the BLAKE3 digest of the bytes loaded as ``LOADED_DIGEST`` ("loaded_blake3")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    digest = blake3.blake3(blob).hexdigest()
    if not verify_checksum(path, (digest, len(blob))) and zipfile.is_zipfile(io.BytesIO(blob)):
        # no record (copied without it): the zip archive's own CRC-32 of every member still tells a damaged file
        # (torch.load does not check them: 8 bytes changed inside a tensor were evaluated, exit 0)
        try:
            bad = zipfile.ZipFile(io.BytesIO(blob)).testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            bad = f"its archive ({type(e).__name__})"
        if bad is not None:
            raise CheckpointError(f"{path}: damaged checkpoint (the CRC-32 of {bad} in its torch zip archive does "
                                  "not match its bytes)")
    try:
        with warnings.catch_warnings():  # torch's multi-line notes on legacy pickles: the one-line error says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a usable checkpoint"
        if blob.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(io.BytesIO(blob)):
            # torch's zip format with its end cut off (a copy or download that stopped): torch says
            # "Invalid argument" or "failed finding central directory" depending on where the cut is
            raise CheckpointError(f"{path}: truncated or damaged checkpoint (a torch zip archive whose central "
                                  "directory cannot be read)") from None
        # anything else is torch.load failing on the content: a text file gives KeyError, a foreign pickle an
        # UnpicklingError with 6+ lines about torch's weights_only default -- say what it means instead
        raise CheckpointError(f"{path}: not a loadable checkpoint (not a torch file, or it holds objects other than "
                              "tensors and plain data, which chdl refuses to unpickle: checkpoints are loaded "
                              f"weights-only so that no code in them runs; {type(e).__name__})") from None
    newer = isinstance(state, dict) and newer_format("checkpoint of format", state.get("format"), CHECKPOINT_FORMAT)
    if newer:
        raise CheckpointError(f"{path}: {newer}")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a chdl checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r})")
    why = _check_structure(state)
    if why:
        raise CheckpointError(f"{path}: malformed checkpoint ({why})")
    state[LOADED_DIGEST] = digest
    return state


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_structure(state: dict) -> str | None:
    """Why a loaded checkpoint lacks what evaluation, prediction and resuming read (None if it has it)."""
    for key, kind in (("config", dict), ("model_name", str), ("model_config", dict), ("data", dict), ("model", dict)):
        if key not in state:
            return f"no {key!r} key"
        if not isinstance(state[key], kind):
            return f"{key!r} must be a {kind.__name__}, not {type(state[key]).__name__}"
    for key in ("model", "run"):
        if not isinstance(state["config"].get(key), dict):
            return f"config has no {key!r} section"
    data = state["data"]
    for key in ("in_frames", "out_frames", "channels", "height", "width"):
        if not _is_int(data.get(key)) or data[key] < 1:
            return f"data.{key} must be an integer >= 1, not {data.get(key)!r}"
    mv = data.get("max_value")
    if not isinstance(mv, (int, float)) or isinstance(mv, bool) or not 0 < mv < float("inf"):
        return f"data.max_value must be a positive number, not {mv!r}"
    for key in ("step", "epoch"):
        if not _is_int(state.get(key)):
            return f"{key!r} must be an integer, not {state.get(key)!r}"
    for key in ("model", "ema"):
        weights = state.get(key)
        if weights is not None and not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
            return f"{key!r} must map parameter names to tensors"
    return None


def load_weights(module: torch.nn.Module, weights: dict, source: str | Path, what: str = "model") -> None:
    """``module.load_state_dict(weights)``, with a one-line CheckpointError naming ``source`` that lists
    missing and unexpected keys and shape mismatches (torch's own message spans many lines)."""
    own = module.state_dict()
    problems = []
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatch (checkpoint vs model)", shapes)):
        if keys:
            problems.append(f"{label}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""))
    if problems:
        raise CheckpointError(f"{source}: {what} weights do not fit {type(module).__name__} ({'; '.join(problems)})")
    module.load_state_dict(weights)


def rng_state() -> dict:
    """Every RNG the training loop or a model may draw from, as plain tensors / numbers."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def build_model_from_checkpoint(state: dict, weights: str = "auto",
                                source: str | Path = "checkpoint") -> tuple[torch.nn.Module, str]:
    """Rebuilds the model from a loaded checkpoint (:func:`load_checkpoint`) through the registry and loads
    its weights.

    weights: "auto" (EMA weights when the checkpoint has them and run.eval_with_ema, else the raw weights),
    "ema" or "model"; ``source`` names the file in errors. Returns (model in eval mode, "ema" | "model").
    CheckpointError (one line naming ``source``) for an unknown model, a model_config the model does not
    take, or weights that do not fit it.
    """
    from diffuma.models.registry import build_model

    try:
        # the stored model_config is the whole config as saved; a field added to the model since takes its
        # dataclass default, which by convention keeps the earlier behaviour (not the preset's newer value,
        # which would not fit the saved weights)
        model = build_model(state["model_name"], None, **state["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise CheckpointError(f"{source}: model_name {state['model_name']!r} with its model_config cannot be "
                              f"built ({str(msg).splitlines()[0]})") from None
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights must be auto, ema or model, got {weights!r}")
    use_ema = state.get("ema") is not None and (
        weights == "ema" or (weights == "auto" and state["config"]["run"].get("eval_with_ema", True)))
    if weights == "ema" and state.get("ema") is None:
        raise CheckpointError(f"{source}: the checkpoint has no EMA weights (run.ema_decay was not set)")
    load_weights(model, state["ema"] if use_ema else state["model"], source, "ema" if use_ema else "model")
    return model.eval(), "ema" if use_ema else "model"

"""Checkpoint files: plain tensors, numbers, strings, lists and dicts only, so ``torch.load(weights_only=True)``
opens them (no pickled classes, nothing executed on load).

Keys (format "chdl.checkpoint/1", docs/training.md "Checkpoints"):
    format, chdl_version, config {model, run} (resolved), model_name, model_config (the model dataclass as a
    dict), data {path, in_frames, out_frames, channels, height, width, max_value, pixel_format},
    model (state_dict), ema (state_dict or None), ema_n_averaged, optimizer, scaler (or None),
    step (optimiser steps done), epoch (current epoch, 0-based), batch_in_epoch (batches of that epoch done),
    rng {torch, cuda, numpy, python} (rank 0), rng_per_rank (every rank's, under torchrun; else None),
    best_val_mse, train_seconds (training time of the steps so far), samples_seen, planned_total_steps (the
    schedule length a run.max_minutes budget planned, diffuma.training.budget; else None).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FORMAT = "chdl.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Writes ``state`` atomically (tmp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes a text file (run config, eval report) through a tmp file in the same folder + os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint on the CPU with ``weights_only=True``; CheckpointError if unreadable or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a usable checkpoint"
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a chdl checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return state


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


def build_model_from_checkpoint(state: dict, weights: str = "auto") -> tuple[torch.nn.Module, str]:
    """Rebuilds the model from a loaded checkpoint through the registry and loads its weights.

    weights: "auto" (EMA weights when the checkpoint has them and run.eval_with_ema, else the raw weights),
    "ema" or "model". Returns (model in eval mode, "ema" | "model").
    """
    from diffuma.models.registry import build_model

    cfg = state["config"]["model"]
    model = build_model(state["model_name"], cfg.get("preset", "default"), **state["model_config"])
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights must be auto, ema or model, got {weights!r}")
    use_ema = state.get("ema") is not None and (
        weights == "ema" or (weights == "auto" and state["config"]["run"].get("eval_with_ema", True)))
    if weights == "ema" and state.get("ema") is None:
        raise CheckpointError("the checkpoint has no EMA weights (run.ema_decay was not set)")
    model.load_state_dict(state["ema"] if use_ema else state["model"])
    return model.eval(), "ema" if use_ema else "model"

"""The training loop: any registered model, through its own ``training_loss``, on a curated dataset.

One code path for one CPU, one GPU or many GPUs under ``torchrun`` (DDP, DistributedSampler, rank 0 logs,
validates and writes checkpoints). Everything that determines the next step — weights, EMA, optimiser,
grad scaler, step, epoch, batches done in the epoch, every RNG — is in the checkpoint, and the data order is
a pure function of (seed, epoch), so ``resume`` continues exactly; on CPU a resumed run ends with the same
weights bit for bit as one that was never interrupted.

Run folder (``out``)::

    config.yaml              resolved config (data-derived model fields included)
    checkpoints/last.pt      latest checkpoint (every epoch end, every run.checkpoint_every_steps, the end)
    checkpoints/best.pt      lowest validation MSE so far
    steps.csv                step, epoch, loss, lr, grad_norm, samples_per_s, elapsed_s, + the model's logs
    epochs.csv               epoch, step, train_loss, val_mse, val_mae, val_ssim, val_psnr, elapsed_s (validation:
                             every val_every_epochs-th epoch, the last one, and the last step of a run that
                             stops mid-epoch, as a row for that unfinished epoch)
    training_dynamics.png    validation MSE / MAE / SSIM per epoch with the baselines' lines (refreshed after
                             every validation)
    tensorboard/             only when the tensorboard package is installed
    .chdl-train.lock         the run folder's lock: one trainer at a time (:func:`claim_run_folder`)

Stopping: SIGINT (Ctrl-C) or SIGTERM during ``fit`` stops after the current step (or the validation in
progress), writes ``last.pt`` at the last completed step and raises :class:`TrainingInterrupted`. A signal heard
before an epoch's validation begins stops before it; a second signal during a validation abandons it: either
way ``last.pt`` records the validation as pending (``pending_log``) and the resume runs it first. Any other
second signal (a third during a validation) aborts at once. A resume then ends exactly where an uninterrupted
run would.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import chdl
from acquisition import files
from chdl.locks import LockHeld, release_lock, take_lock
from chdl.provenance import code_version
from diffuma.evaluation import BASELINES, NonFinitePredictions, autocast, evaluate, result_key
from diffuma.metrics import check_ssim_size
from diffuma.training.budget import CALIBRATION_STEPS, REPLAN_FRACTION, planned_total_steps, step_time_estimate
from diffuma.training.checkpoint import (CheckpointError, load_checkpoint, load_weights, rng_state, save_checkpoint,
                                         set_rng_state)
from diffuma.training.config import ConfigError, RunConfig, resolve_config, run_config_from_dict
from diffuma.training.data import (ResumableSampler, dataset_info, dataset_mismatch, make_loader,
                                   sequence_datasets)
from diffuma.training.optim import param_groups
from diffuma.training.schedule import lr_at

STEP_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s"]
EPOCH_FIELDS = ["epoch", "step", "train_loss", "val_mse", "val_mae", "val_ssim", "val_psnr", "elapsed_s"]


LOCK_FILE = ".chdl-train.lock"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed (one ignored, e.g. by nohup, stays ignored)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class RunFolderError(RuntimeError):
    """A run folder that cannot be used: it cannot be created, it is a dataset or a recording, or another
    trainer holds it. The message names the folder."""


class ResumeConfigMismatch(ConfigError):
    """A run resumed with another config than the one it saved: ``diff`` names the fields that differ."""

    def __init__(self, path, diff: str):
        self.diff = diff
        super().__init__(f"{path}: resume with a different config ({diff}); resume uses the run's saved config — "
                         "start a new --out to change it")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run; ``last.pt`` holds step ``step`` (``--resume`` continues from there). A
    KeyboardInterrupt, so callers that do not know it treat it as the Ctrl-C it is."""

    def __init__(self, step: int, checkpoint: Path, finished: bool = False, validation_pending: bool = False):
        """``finished``: the signal came after the last step (during the final validation): the run is complete.
        ``validation_pending``: it stopped before (or in) an epoch's validation, which the resume runs first."""
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.finished = step, checkpoint, finished
        self.validation_pending = validation_pending


class _ValidationAbandoned(BaseException):
    """Raised by the stop-signal handler into a validation in progress at the second signal (not an Exception:
    nothing on the way may swallow it)."""


# what a run folder holds (RUN_FILES in chdl/cli/train.py, the lock, eval/ and predict/ outputs): a fresh run
# starts only in a folder that holds nothing else
RUN_FOLDER_ENTRIES = {"checkpoints", "config.yaml", "steps.csv", "epochs.csv", "training_dynamics.png", "tensorboard",
                      "eval", LOCK_FILE}


def check_run_folder(out: Path) -> None:
    """RunFolderError when ``out`` cannot be a run folder: a file, a chdl/zarr dataset (zarr.json), or a raw
    recording (manifest.json + frames.jsonl) -- the trainer would write its files into them."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: cannot create the run folder (a file of that name exists)")
    if (out / "zarr.json").is_file():
        raise RunFolderError(f"{out}: a dataset (it holds zarr.json), not a run folder; choose another --out")
    if (out / "manifest.json").is_file() and (out / "frames.jsonl").is_file():
        raise RunFolderError(f"{out}: a raw recording (it holds manifest.json and frames.jsonl), not a run folder; "
                             "choose another --out")


def resume_checkpoint(out: Path) -> Path:
    """The checkpoint ``--resume`` continues from: ``checkpoints/last.pt``; where there is none but a ``best.pt``,
    that one (the end of an epoch writes best.pt, then last.pt: when the first last.pt could not be written, a full
    disk, best.pt holds exactly the state it would have held). FileNotFoundError naming last.pt if neither exists."""
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    if last.is_file():
        return last
    if best.is_file():
        return best
    raise FileNotFoundError(f"{last}: nothing to resume (no checkpoint in {out})")


def check_fresh_run_folder(out: Path) -> None:
    """FileExistsError when a fresh run may not start in the run folder ``out``: it holds a run's checkpoints
    (``last.pt``, or only ``best.pt``/``epoch_*.pt``: a fresh run replaced them and their logs) or files that are not
    a run's (a fresh run scattered its files among them). A folder of a run killed before its first checkpoint is
    fine."""
    if not out.is_dir():
        return
    saved = sorted(p.name for p in (out / "checkpoints").glob("*.pt")) if (out / "checkpoints").is_dir() else []
    if "last.pt" in saved:
        raise FileExistsError(f"{out}: already holds a run (checkpoints/last.pt); pass --resume to continue it or "
                              "choose another --out")
    if "best.pt" in saved:
        raise FileExistsError(f"{out}: already holds a run whose last.pt was never written (checkpoints/best.pt); "
                              "pass --resume to continue it from best.pt, or choose another --out")
    if saved:
        raise FileExistsError(f"{out}: already holds a run's checkpoints ({', '.join(saved[:3])}) but no last.pt to "
                              "resume from; choose another --out (or move that run away to start anew here)")
    # (hidden names aside: a killed write's .<name>.tmp<pid>, which the run removes, the lock, a desktop's files)
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FOLDER_ENTRIES and not p.name.startswith("."))
    if others:
        raise FileExistsError(f"{out}: holds files that are not a chdl run's ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); choose another --out (an empty or new folder)")


def claim_run_folder(out: Path) -> int:
    """Creates the run folder ``out`` if needed and takes its lock for as long as the returned descriptor is open:
    :func:`chdl.locks.take_lock` on ``out/.chdl-train.lock`` (held by this process only, not by its DataLoader
    workers; dropped when it ends, SIGKILL too). RunFolderError when the folder cannot be created (naming the OS's
    reason) or another process holds the lock (naming its pid)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return take_lock(out / LOCK_FILE)
    except LockHeld as e:
        raise RunFolderError(f"{out}: the folder is in use by another chdl train (pid {e.pid}); wait for it to "
                             "end or stop it, or choose another --out") from None
    except OSError as e:  # (an existing folder: its lock file could not be made, e.g. read-only)
        if out.is_dir():
            raise RunFolderError(f"{out}: cannot write in the run folder ({e.strerror or e})") from None
        raise RunFolderError(f"{out}: cannot create the run folder{files.cannot_create(out, e)}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _LossModule(nn.Module):
    """Routes ``training_loss`` through ``forward`` so DDP's gradient hooks see it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, y, step: int, total_steps: int):
        return self.model.training_loss(x, y, step=step, total_steps=total_steps)


@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    _end_with_launcher()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _end_with_launcher(poll_s: float = 0.5) -> None:
    """A torchrun rank signals itself SIGTERM once when its launcher is gone (its parent changes), and stops as it
    does on SIGTERM (checkpoint at the step, exit 130). torchrun starts the ranks in sessions of their own, so a
    launcher killed with SIGKILL (or its process group) left them training to the end, unwatched, holding the
    run folder's lock. (A thread, not Linux's PR_SET_PDEATHSIG: that signal comes again as each of the
    launcher's threads exits, and a second stop signal means "abort at once, without saving".)"""
    import signal

    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="chdl-launcher-watch", daemon=True).start()


def shutdown_distributed() -> None:
    """Ends this process's part of a torchrun job (no-op in a single process): a barrier, so no rank leaves
    while another still talks to it, then ``destroy_process_group``. A rank that exits with the process
    group alive can abort in gloo's threads at interpreter exit ("terminate called without an active
    exception", SIGABRT: seen once in tests/diffuma/training/test_distributed.py under CI load)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _resolve_device(run: RunConfig, d: _Dist) -> torch.device:
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is cuda but torch.cuda.is_available() is False")
    if run.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(d.local_rank)
    return torch.device("cuda", d.local_rank)


def _amp_dtype(run: RunConfig, device: torch.device) -> torch.dtype | None:
    """None = fp32. bf16 where the GPU supports it, else fp16 (+ GradScaler); mixed precision is off on CPU."""
    if run.precision == "fp32":
        return None
    if device.type != "cuda":
        if run.precision == "auto":
            return None
        raise ConfigError(f"run.precision {run.precision} needs a CUDA device (mixed precision is off on CPU); "
                          "use auto or fp32")
    if run.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("run.precision bf16: this GPU does not support bfloat16; use auto or fp16")
    if run.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if run.precision == "bf16" else torch.float16


class _CsvLog:
    """Appends rows to a CSV; on resume drops the rows after the checkpoint so re-done steps are not doubled."""

    def __init__(self, path: Path, fields: list[str], key: str, keep_upto: int | None):
        self.path, self.key = path, key
        rows = []
        if path.exists() and keep_upto is not None:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                fields = list(reader.fieldnames or fields)
                rows = [r for r in reader if r.get(key) and int(r[key]) <= keep_upto]
        self.fields = fields
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.rows = rows
        self.file.flush()

    def add_fields(self, names) -> None:
        """Adds columns (e.g. the model's loss logs) while the file still has no rows."""
        new = [n for n in names if n not in self.fields]
        if new and not self.rows:
            self.fields += new
            self.file.seek(0)
            self.file.truncate()
            self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
            self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.rows.append(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Trainer:
    """Trains ``model`` (built and seeded by the caller) on ``train_set``, validating on ``val_set``.

    ``config`` is the resolved ``{"model": ..., "run": ...}`` dict that goes into checkpoints; ``data_info`` is
    ``diffuma.training.data.dataset_info(...)``.
    """

    def __init__(self, model: nn.Module, config: dict, train_set, val_set, out: str | Path, data_info: dict,
                 progress: bool = True):
        self.config = config
        self.lock_fd: int | None = None  # the run folder's lock when build_trainer took it (fit takes it otherwise)
        self.run = run_config_from_dict(config["run"])
        self.out = Path(out)
        self.data_info = data_info
        self.train_set, self.val_set = train_set, val_set
        if len(train_set) == 0:
            raise ValueError(f"{data_info.get('path')}: the train split has no sequences")
        self.dist = _init_distributed("cuda" if self.run.device != "cpu" and torch.cuda.is_available() else "cpu")
        self.device = _resolve_device(self.run, self.dist)
        self.amp_dtype = _amp_dtype(self.run, self.device)
        self.progress = progress and self.dist.main
        self.model = model.to(self.device)
        if hasattr(getattr(model, "config", None), "scan_backend"):  # a forced scan backend fails here, not mid-run
            from diffuma.models.ssm import check_backend
            check_backend(model.config.scan_backend, self.device)
        if self.dist.world_size > 1:
            # Same initial weights everywhere (DDP also broadcasts rank 0's), different noise per rank.
            torch.manual_seed(self.run.seed + 1000003 * self.dist.rank)
        # The model's weight-decay policy (no_weight_decay()) plus no decay on biases / norms: optim.py.
        opt_cls = torch.optim.AdamW if self.run.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(param_groups(model, self.run.weight_decay), lr=self.run.lr,
                                 betas=tuple(self.run.betas))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.run.ema_decay), use_buffers=True)
                    if self.run.ema_decay is not None else None)
        self.loss_module: nn.Module = _LossModule(model)
        if self.dist.world_size > 1:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.sampler = ResumableSampler(train_set, shuffle=True, seed=self.run.seed, rank=self.dist.rank,
                                        world_size=self.dist.world_size)
        self.loader = make_loader(train_set, self.run.batch_size, sampler=self.sampler,
                                  num_workers=self.run.num_workers, seed=self.run.seed,
                                  pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = math.ceil(len(self.sampler.base) / self.run.batch_size)
        self.total_steps = self.run.epochs * self.steps_per_epoch
        if self.run.max_steps is not None:
            self.total_steps = min(self.total_steps, self.run.max_steps)
        self.step_cap = self.total_steps                 # run.epochs / run.max_steps: a budget plan never exceeds it
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_val_mse = math.inf
        self.code = code_version(torch=True)  # the code that writes this run's checkpoints (chdl.provenance)
        # Sum and count of this epoch's step losses (checkpointed, so a resumed epoch's train_loss in
        # epochs.csv averages every step of the epoch, not only those after the resume).
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        self.last_saved_step: int | None = None
        self.baselines_val: dict[str, dict] | None = None  # {baseline row name: overall val metrics}, once
        # Training time (s) and samples of the optimiser steps so far; the budget (s) of run.max_minutes, the
        # schedule length planned for it (None until CALIBRATION_STEPS steps are timed) and those steps' times.
        self.clock = time.perf_counter  # seconds; tests inject their own
        self.train_seconds, self.samples_seen = 0.0, 0
        # Wall-clock seconds of the run (steps.csv / epochs.csv elapsed_s): carried over a resume from the
        # checkpoint, so the logs' time axis continues instead of restarting at 0 (the steps a killed process
        # made after its last checkpoint are made again and counted once).
        self.elapsed_before, self._t0 = 0.0, None
        self.budget_s = None if self.run.max_minutes is None else 60.0 * self.run.max_minutes
        self.planned_steps: int | None = None
        self._calibration_s: list[float] = []
        self._since_plan_s: list[float] | None = []   # step times after the plan, until the re-plan (then None)
        self._step_started = 0.0
        # SIGCONT: the process was stopped (SIGSTOP, Ctrl-Z) and continued. A step it fell in is charged as the
        # median of the recent steps, not its wall-clock (a 20 s pause used up a 30 s budget: 5 steps, not 31)
        self._continued = self._continued_at_step_start = 0
        self._recent_step_s: collections.deque = collections.deque(maxlen=32)
        self._stop_signal: int | None = None  # SIGINT/SIGTERM received during fit (_on_stop_signal)
        self._validating = False  # inside validate() (what a stop signal waits for, _on_stop_signal)
        self._abandoning = False  # a second signal abandoned the validation: a third aborts at once
        self._saving = False  # a checkpoint is being written: signals wait for it (save)
        self._in_epoch_end = False  # an epoch's validation, log and checkpoints (_closing_epoch)
        # an epoch whose validation (and epochs.csv row, best.pt) a stop left undone: {"epoch", "train_loss"};
        # saved in the checkpoint, run first by the resume
        self.pending_log: dict | None = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def state(self, rngs: list[dict]) -> dict:
        """The checkpoint dict; ``rngs`` = every rank's ``rng_state()`` (one entry without torchrun)."""
        return {
            "chdl_version": getattr(chdl, "__version__", "unknown"),
            "code": self.code,
            "config": self.config,
            "model_name": self.config["model"]["name"],
            "model_config": dataclasses.asdict(self.model.config),
            "data": self.data_info,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_n_averaged": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss_sum": self.epoch_loss_sum, "epoch_loss_n": self.epoch_loss_n,
            "rng": rngs[0],
            "rng_per_rank": rngs if len(rngs) > 1 else None,
            "best_val_mse": self.best_val_mse,
            "train_seconds": self.train_seconds, "samples_seen": self.samples_seen,
            "planned_total_steps": self.planned_steps,
            # what run.precision "auto" and run.device "auto" resolved to (bench's recipe table states them)
            "precision_used": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32"),
            "device_used": self.device.type,
            "elapsed_s": self.elapsed_before if self._t0 is None else time.perf_counter() - self._t0,
            "pending_log": self.pending_log,
        }

    def save(self, name: str = "last.pt") -> None:
        """Writes checkpoints/<name> (rank 0). Under torchrun every rank calls it: it gathers their RNG states."""
        rngs = [rng_state()]
        if self.dist.world_size > 1:
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, rng_state())
        if self.dist.main:
            state = self.state(rngs)
            if name == "best.pt":  # chdl eval says so when it scores this checkpoint on the split that chose it
                state["selected"] = {"by": "validation MSE", "split": "val",
                                     "max_sequences": self.run.val_max_sequences}
            self._saving = True  # (a Ctrl-C inside torch.save lost the stop's checkpoint: _on_stop_signal)
            try:
                save_checkpoint(self.ckpt_dir / name, state)
            finally:
                self._saving = False
        if name == "last.pt":
            self.last_saved_step = self.step

    def load(self, path: Path) -> None:
        state = load_checkpoint(path)
        self._check_same_dataset(state["data"])
        # the model as built (a preset's value given explicitly is the same model), the run without how it is run
        # (a field added to the model since the checkpoint was written takes its dataclass default, as
        # checkpoint.build_model_from_checkpoint builds it: runs of 11-30 were refused as "saved None vs given 4")
        from diffuma.models.registry import model_config

        defaults = dataclasses.asdict(model_config(state["model_name"], None)) \
            if state["model_name"] == self.config["model"]["name"] else {}
        saved = {**_without_how(state["config"]),
                 "model": {"name": state["model_name"], **defaults, **state["model_config"]}}
        given = {**_without_how(self.config), "model": {"name": self.config["model"]["name"],
                                                        **dataclasses.asdict(self.model.config)}}
        if _plain(saved) != _plain(given):
            raise ResumeConfigMismatch(path, _config_diff(_plain(saved), _plain(given)))
        load_weights(self.model, state["model"], path)
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"{path}: malformed checkpoint (no EMA weights, but run.ema_decay is set)")
            load_weights(self.ema.module, state["ema"], path, "ema")
            self.ema.n_averaged.fill_(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        # Checkpoints older than the running epoch loss: the epoch's mean then covers the steps after the resume.
        self.epoch_loss_sum, self.epoch_loss_n = state.get("epoch_loss_sum", 0.0), state.get("epoch_loss_n", 0)
        self.best_val_mse = state["best_val_mse"]
        self.pending_log = state.get("pending_log")
        self.last_saved_step = self.step
        self.train_seconds = state.get("train_seconds", 0.0)
        self.elapsed_before = state.get("elapsed_s", self.train_seconds)  # older checkpoints: training time
        self.samples_seen = state.get("samples_seen", self.step * self.run.batch_size * self.dist.world_size)
        self.planned_steps = state.get("planned_total_steps")
        if self.planned_steps is not None:
            self.total_steps = self.planned_steps
        per_rank = state.get("rng_per_rank")
        saved_world = len(per_rank) if per_rank else 1
        if saved_world != self.dist.world_size:  # data shards and noise streams would differ
            raise ConfigError(f"{path}: saved by {saved_world} process(es), resumed with {self.dist.world_size}; "
                              "resume with the same number of processes")
        set_rng_state(per_rank[self.dist.rank] if self.dist.world_size > 1 else state["rng"])

    def _check_same_dataset(self, saved: dict) -> None:
        """ConfigError naming both datasets when the run's checkpoint was made with another dataset than
        ``self.data_info``'s (diffuma.training.data.dataset_mismatch: shape, max_value, content or creation
        time; not the path, so a moved or copied dataset resumes). A checkpoint from before chdl recorded the
        identity is compared by frame size and max_value, and by path: a different path is a warning then."""
        here, there = self.data_info.get("path"), saved.get("path")
        why = dataset_mismatch(saved, self.data_info)
        if why:
            raise ConfigError(f"{here}: not the dataset this run was made with ({there}): {why}; resume with --data "
                              f"{there} (or a copy of it), or start a new --out")
        if "identity" not in saved and here != there and self.dist.main:
            print(f"warning: the run's checkpoint does not record which dataset it was made with (written before "
                  f"chdl did), only its path {there} and its frame size and max_value (the same): cannot check that "
                  f"{here} is the same data", file=sys.stderr)

    # ------------------------------------------------------------------ validation
    @contextlib.contextmanager
    def _diverged_in_validation(self):
        """Predictions that are not finite stop the run as a NaN loss does (a finite last loss, then weights that
        predict NaN: epochs.csv held nan and the run ended as if it had trained, exit 0)."""
        try:
            yield
        except NonFinitePredictions as e:
            where = (f"last good checkpoint: {self.ckpt_dir / 'last.pt'} (step {self.last_saved_step})"
                     if self.last_saved_step is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(f"validation after step {self.step}: {e}; training "
                                   f"stopped, {where}") from None

    def validate(self) -> dict | None:
        if len(self.val_set) == 0:
            return None
        model = self.ema.module if (self.ema is not None and self.run.eval_with_ema) else self.model
        devices = [self.device] if self.device.type == "cuda" else []
        self._validating = True
        try:
            with torch.random.fork_rng(devices=devices), self._diverged_in_validation():
                # (fork_rng: validation never shifts the training RNG stream)
                res = evaluate(model, self.val_set, batch_size=self.run.val_batch_size or self.run.batch_size,
                               device=self.device, max_sequences=self.run.val_max_sequences,
                               # float32 as chdl eval (no autocast): on a GPU the bf16 numbers of validation
                               # differed from chdl eval's of the same weights, and chose best.pt by them
                               with_baselines=self.baselines_val is None, progress=self.progress)
        finally:
            self._validating = False
        self.model.train()
        if self.baselines_val is None:  # the same val sequences every time: scored once
            self.baselines_val = {name: res[result_key(name)]["overall"] for name in BASELINES}
        return res["model"]["overall"]

    # ------------------------------------------------------------------ training time and the budget
    def _start_step_clock(self) -> None:
        """Marks the start of a step: the loop is about to ask the loader for its batch."""
        self._continued_at_step_start = self._continued
        self._step_started = self.clock()

    def _on_continue(self, signum, frame) -> None:
        """SIGCONT: the process was stopped and has been continued; the step in progress is not charged in full."""
        self._continued += 1

    def _charge_step(self, batch_size: int) -> None:
        """Counts the step that just ended as training time (since ``_start_step_clock``) and samples seen. A
        budget run plans its schedule length once CALIBRATION_STEPS steps are timed, and once more from the later
        steps when REPLAN_FRACTION of the budget is spent (diffuma.training.budget)."""
        seconds = self.clock() - self._step_started
        timed = True  # a step whose time tells how long steps take (for the median and the budget's plan)
        if self._continued != self._continued_at_step_start:
            # the first step of a run or of a resumed process has no other to compare with: it counts nothing, and
            # is no sample of a step's time (it was charged in full: a 20 s pause there ended a 30 s run at 10 steps)
            timed = bool(self._recent_step_s)
            typical = sorted(self._recent_step_s)[len(self._recent_step_s) // 2] if timed else 0.0
            # (not when a stop signal came with it: GNU timeout and batch schedulers send SIGCONT right after their
            # SIGINT/SIGTERM, in case the process was stopped, and nothing was)
            if seconds > typical and self.dist.main and self._stop_signal is None:
                tqdm.write(f"step {self.step}: the process was stopped and continued during it (SIGSTOP or Ctrl-Z, "
                           f"then SIGCONT); its {seconds:.1f} s count as {typical:.3g} s of training time ("
                           f"{'the median step' if timed else 'no step before it to measure it by'}), so a pause "
                           "does not use up run.max_minutes", file=sys.stderr)
            seconds = min(seconds, typical)
        if timed:
            self._recent_step_s.append(seconds)
        if self.budget_s is not None and self.dist.world_size > 1:
            seconds = _max_over_ranks(seconds, self.device)  # every rank takes the same stop decisions
        self.train_seconds += seconds
        self.samples_seen += batch_size * self.dist.world_size
        if self.budget_s is None or not timed:
            return
        if self.planned_steps is None:
            self._calibration_s.append(seconds)
            if len(self._calibration_s) >= CALIBRATION_STEPS:
                self._plan(step_time_estimate(self._calibration_s))
        elif self._since_plan_s is not None:
            self._since_plan_s.append(seconds)
            if len(self._since_plan_s) >= CALIBRATION_STEPS and self.train_seconds >= REPLAN_FRACTION * self.budget_s:
                self._plan(sum(self._since_plan_s) / len(self._since_plan_s))
                self._since_plan_s = None

    def _plan(self, step_s: float) -> None:
        """Sets the schedule length from a step time (s): diffuma.training.budget.planned_total_steps, capped by
        run.epochs / run.max_steps."""
        self.planned_steps = planned_total_steps(self.step, self.train_seconds, self.budget_s, step_s, self.step_cap)
        self.total_steps = self.planned_steps

    def _bar_label(self) -> str:
        """Progress-bar label: "epoch 3/10", or "epoch 3 (10 min budget)" when the run is bounded by time."""
        if self.budget_s is not None:
            return f"epoch {self.epoch + 1} ({self.run.max_minutes:g} min budget)"
        epochs = min(self.run.epochs, -(-self.total_steps // max(self.steps_per_epoch, 1)))  # (run.max_steps may end it early)
        return f"epoch {self.epoch + 1}/{epochs}"

    def _bar_total(self) -> int:
        """The steps this epoch's progress bar counts to: the epoch's batches, or fewer where run.max_steps ends the
        run inside it (the bar stopped at 20 %, its ETA that of the whole epoch); a time budget's run keeps the
        epoch's (its end is a time, not a step)."""
        if self.budget_s is not None:
            return self.steps_per_epoch
        return min(self.steps_per_epoch, self.batch_in_epoch + max(self.total_steps - self.step, 0))

    def finished(self) -> bool:
        """True when the run has nothing left to train: run.epochs done, the planned steps (run.max_steps or a
        budget's plan) taken, or the training-time budget spent."""
        return self.epoch >= self.run.epochs or self.step >= self.total_steps or self.budget_spent()

    def _end_reason(self) -> str:
        """Why :meth:`finished` is true, for a message (a budget's planned steps all taken: those, not the budget,
        which a run that ended on its schedule has spent too)."""
        if self.budget_spent() and self.step < self.total_steps:
            return f"its {self.run.max_minutes:g}-minute training budget spent"
        if self.epoch >= self.run.epochs:
            return f"{self.run.epochs} epoch{'s' if self.run.epochs != 1 else ''} done"
        return f"all {self.total_steps} planned steps done"

    def budget_spent(self) -> bool:
        """True when run.max_minutes is set and the training time has reached it."""
        return self.budget_s is not None and self.train_seconds >= self.budget_s

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, stop_after_steps: int | None = None) -> Path:
        """Trains to the end of the schedule (or of run.max_minutes of training time); returns the run folder.

        resume: continue from ``checkpoints/last.pt`` (an error if there is none).
        stop_after_steps: return abruptly after this many steps of this call without saving anything —
        what a killed process leaves behind (used by the resume tests).
        """
        lock, self.lock_fd = self.lock_fd, None  # taken by build_trainer, or here
        if lock is None and self.dist.main:
            lock = claim_run_folder(self.out)
        try:
            return self._fit_locked(resume, stop_after_steps)
        finally:
            self._end_loader_workers()
            if lock is not None:
                os.close(lock)  # releases the run folder's lock

    def _end_loader_workers(self) -> None:
        """Stop the loader's persistent worker processes now, not when the garbage collector gets to them: in a
        process that trains again (chdl bench, one model after another) the next loader forked its workers while
        the last one's still existed, and their collection printed "can only test a child process" tracebacks."""
        iterator = getattr(self.loader, "_iterator", None)  # (torch keeps a persistent iterator there)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def _fit_locked(self, resume: bool, stop_after_steps: int | None) -> Path:
        """:meth:`fit` once the run folder is this process's (rank 0) or rank 0's (the other ranks)."""
        last = self.ckpt_dir / "last.pt"
        if self.dist.main:  # what a process killed while writing left behind
            files.remove_stale_temporaries(self.ckpt_dir)
            files.remove_stale_temporaries(self.out)
        if resume:
            self.load(resume_checkpoint(self.out))
            # nothing left to train (nor a validation a stop left pending): the folder stays as it is (a resume
            # wrote config.yaml and a new tensorboard events file, and said nothing)
            if self.finished() and self.pending_log is None:
                if self.dist.main:
                    print(f"nothing to resume: {self.out} finished at step {self.step} ({self._end_reason()}); its "
                          "files are unchanged", file=sys.stderr)
                return self.out
        elif last.exists():
            raise FileExistsError(f"{self.out}: already holds a run (checkpoints/last.pt); pass --resume to "
                                  "continue it or choose another --out")
        if self.dist.main:
            files.write_text(self.out / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
            # a resume keeps the rows up to its checkpoint; the row of an epoch cut short by run.max_steps (or the
            # budget) is kept too when nothing is left to train (it was dropped, and never redone)
            kept_epochs = self.epoch + (1 if self.finished() and self.batch_in_epoch else 0)
            if self.pending_log is not None:  # (its row was never written)
                kept_epochs = self.pending_log["epoch"] - 1
            steps_log = _CsvLog(self.out / "steps.csv", list(STEP_FIELDS), "step", self.step if resume else None)
            epochs_log = _CsvLog(self.out / "epochs.csv", list(EPOCH_FIELDS), "epoch", kept_epochs if resume else None)
            # a resumed run redoes the steps after its checkpoint: their events from before are purged
            tb = _tensorboard(self.out / "tensorboard", purge_step=self.step + 1 if resume else None)
        self.model.train()
        self._t0 = t0 = time.perf_counter() - self.elapsed_before
        done_now = 0
        previous_handlers = self._catch_stop_signals()
        bar = None
        try:
            if self.pending_log is not None:  # the validation a stop left undone, before anything else
                pending, self.pending_log = self.pending_log, None  # (best.pt written by it must not carry it)
                with self._closing_epoch():
                    self._log_epoch(pending["epoch"], pending["train_loss"], True,
                                    epochs_log if self.dist.main else None, tb if self.dist.main else None, t0)
                    self.save()
            while not self.finished():
                if self._stop_requested():
                    self._stop()
                self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.run.batch_size)
                bar = tqdm(total=self._bar_total(), initial=self.batch_in_epoch, unit="step", dynamic_ncols=True,
                           desc=self._bar_label(), disable=not self.progress)
                t_last = time.perf_counter()
                self._start_step_clock()
                for x, y in self._batches():
                    if self._stop_requested():  # this batch is left for the resume
                        bar.close()
                        self._stop()
                    loss, logs, grad_norm = self._train_step(x, y)
                    self.step += 1
                    self.batch_in_epoch += 1
                    done_now += 1
                    self._charge_step(x.shape[0])
                    self.epoch_loss_sum, self.epoch_loss_n = self.epoch_loss_sum + loss, self.epoch_loss_n + 1
                    now = time.perf_counter()
                    rate = x.shape[0] * self.dist.world_size / max(now - t_last, 1e-9)
                    t_last = now
                    bar.set_postfix(loss=f"{loss:.4g}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                    seq_s=f"{rate:.1f}", refresh=False)  # (drawn by update: at its mininterval)
                    bar.update(1)
                    last_step = self.step >= self.total_steps or self.budget_spent()
                    # every log_every_steps-th step, and the last one (a run shorter than log_every_steps logged none)
                    if self.dist.main and (self.step % self.run.log_every_steps == 0 or last_step):
                        row = {"step": self.step, "epoch": self.epoch + 1, "loss": loss,
                               "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                               "samples_per_s": rate, "elapsed_s": now - t0, **logs}
                        steps_log.add_fields(logs)
                        steps_log.write(row)
                        if tb is not None:
                            for k, v in row.items():
                                if k not in ("step", "epoch") and v is not None:
                                    tb.add_scalar(f"train/{k}", v, self.step)
                    if self.run.checkpoint_every_steps and self.step % self.run.checkpoint_every_steps == 0:
                        self.save()
                    if stop_after_steps is not None and done_now >= stop_after_steps:
                        bar.close()
                        return self.out  # simulated kill: nothing more is written
                    if last_step:
                        break
                    self._start_step_clock()
                bar.close()
                if self.batch_in_epoch < self.steps_per_epoch:
                    # max_steps, the planned steps or the budget reached mid-epoch: the final weights are
                    # validated as a partial epoch (its row's step says where it ended), so best.pt covers them
                    with self._closing_epoch():
                        self._log_epoch(self.epoch + 1, self.epoch_loss_sum / max(self.epoch_loss_n, 1),
                                        self.run.val_every_epochs > 0, epochs_log if self.dist.main else None,
                                        tb if self.dist.main else None, t0)
                        self.save()
                    break
                self._end_epoch(self.epoch_loss_sum / max(self.epoch_loss_n, 1), epochs_log if self.dist.main else None,
                                tb if self.dist.main else None, t0)
            if self.last_saved_step != self.step:
                self.save()
            if self._stop_requested():  # (heard during the last validation: the run is done, the caller is told
                self._stop()            # so, e.g. chdl bench, which went on to train every other model)
        finally:
            if bar is not None:  # (a stop raised in the loop: the bar, closed later, was redrawn after the
                bar.close()      # closing message)
            self._restore_signal_handlers(previous_handlers)
            if self.dist.main:
                steps_log.close()
                epochs_log.close()
                if tb is not None:
                    tb.close()
        return self.out

    # ------------------------------------------------------------------ stopping on SIGINT / SIGTERM
    def _catch_stop_signals(self) -> dict | None:
        """Installs the SIGINT/SIGTERM/SIGHUP handler for the loop and the SIGCONT one (:meth:`_on_continue`; main
        thread only: elsewhere Python cannot); returns the handlers it replaced (SIGCHLD's too, which
        _on_stop_signal may change)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        self._stop_signal = None
        return {signal.SIGCHLD: signal.getsignal(signal.SIGCHLD), signal.SIGCONT: signal.signal(signal.SIGCONT,
                                                                                                self._on_continue),
                **{s: signal.signal(s, self._on_stop_signal) for s in STOP_SIGNALS
                   if signal.getsignal(s) is not signal.SIG_IGN}}

    @staticmethod
    def _restore_signal_handlers(previous: dict | None) -> None:
        for s, handler in (previous or {}).items():
            signal.signal(s, handler)

    def _on_stop_signal(self, signum, frame) -> None:
        """The first signal asks the loop to stop at the next step boundary (or after the validation in progress).
        A second one skips the rest of a validation (one process: _ValidationAbandoned, last.pt saved with it
        pending), waits while a checkpoint or a validated epoch's results are written, and else aborts at once.

        The loader's workers ignore SIGINT (data.ignore_stop_signals) but die of a SIGTERM sent to the whole
        process group (a scheduler's stop); torch's SIGCHLD handler would then raise in the middle of the step
        in progress, so it is set aside: the loader reports the dead workers when the next batch is asked for,
        and _batches stops there."""
        if self._stop_signal is not None and (self._saving or (self._in_epoch_end and not self._validating)):
            # a second (or third) signal while a checkpoint or a validated epoch's results are written: they are
            # finished first (a second or so); torch.save cut short lost the stop's last.pt and was reported as a
            # full disk, and one just after a validation lost the epoch
            if self.dist.main and self.progress:
                what = "a checkpoint is" if self._saving else "the epoch's results are"
                tqdm.write(f"stopping: {what} being written; finished first, then last.pt", file=sys.stderr)
            return
        if self._stop_signal is not None:
            if self._validating and self.dist.world_size == 1 and not self._abandoning:
                self._abandoning = True  # (_log_epoch saves last.pt with the validation pending)
                raise _ValidationAbandoned
            raise KeyboardInterrupt
        self._stop_signal = signum
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self.dist.main and self.progress:  # say at once that it was heard: a validation pass can take minutes
            again = "a second Ctrl-C" if signum == signal.SIGINT else f"a second {signal.Signals(signum).name}"
            if self._validating and self.dist.world_size == 1:
                tqdm.write(f"stopping: finishing the validation in progress, then saving last.pt ({again} skips "
                           "the rest of it and saves last.pt now; the resume validates first)", file=sys.stderr)
                return
            unsaved = self.step - (self.last_saved_step or 0)  # (what a second signal would throw away)
            lost = (f": the {unsaved} step{'s' if unsaved != 1 else ''} since "
                    + (f"last.pt (step {self.last_saved_step})" if self.last_saved_step is not None else "the start")
                    + " would be lost" if unsaved else "")
            what = "the validation in progress" if self._validating else "the current step"
            tqdm.write(f"stopping: finishing {what}, then saving last.pt ({again} stops at once, "
                       f"without saving{lost})", file=sys.stderr)

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived (under torchrun: on any rank, so that all ranks stop at the same step)."""
        stop = self._stop_signal is not None
        if self.dist.world_size > 1:
            flag = torch.tensor(float(stop), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def _stop(self) -> None:
        """Writes last.pt at the last completed step (unless it holds it already), then raises TrainingInterrupted."""
        if self.last_saved_step != self.step:
            self.save()
        raise TrainingInterrupted(self.step, self.ckpt_dir / "last.pt", self.finished())

    def _stop_with_validation_pending(self, epoch: int, train_loss: float) -> None:
        """Writes last.pt with epoch ``epoch``'s validation and epochs.csv row left for the resume (``pending_log``),
        then raises TrainingInterrupted. The training RNG is as it was before the validation (it runs in fork_rng),
        so the resumed run still ends bit for bit as an uninterrupted one."""
        self.pending_log = {"epoch": epoch, "train_loss": train_loss}
        self.save()
        raise TrainingInterrupted(self.step, self.ckpt_dir / "last.pt", validation_pending=True)

    def _batches(self):
        """The epoch's batches. A loader error after a stop signal (a worker killed by the same signal) stops the
        run as the signal asks, in a single process; otherwise it is raised."""
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception:
                if self._stop_signal is None or self.dist.world_size > 1:
                    raise
                self._stop()
            yield batch

    def _train_step(self, x, y) -> tuple[float, dict, float | None]:
        to_unit = getattr(self.train_set, "to_unit", None)  # integer batches (SequenceDataset(integer=True))
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if to_unit is not None:
            x, y = to_unit(x), to_unit(y)
        lr = lr_at(self.step, self.total_steps, self.run.lr, self.run.schedule, self.run.warmup_steps,
                   self.run.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with autocast(self.device, self.amp_dtype):
            loss, logs = self.loss_module(x, y, self.step, self.total_steps)
        # [any rank's loss not finite, loss, logs...]: under torchrun summed over the ranks in one collective, so
        # that every rank stops together and the logs (steps.csv, epochs.csv's train_loss) are the mean over all
        # ranks' samples, not rank 0's share alone
        names = list(logs)
        shared = torch.stack([torch.tensor(0.0 if torch.isfinite(loss.detach()).item() else 1.0, device=self.device),
                              loss.detach().float(), *(torch.as_tensor(logs[k], device=self.device).float()
                                                       for k in names)])
        if self.dist.world_size > 1:
            dist.all_reduce(shared, op=dist.ReduceOp.SUM)
            shared[1:] /= self.dist.world_size
        if shared[0].item() > 0:
            where = (f"last good checkpoint: {self.ckpt_dir / 'last.pt'} (step {self.last_saved_step})"
                     if self.last_saved_step is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(f"loss is {loss.item()} at step {self.step + 1} (epoch {self.epoch + 1}); "
                                   f"training stopped, {where}. Lower run.lr, raise run.warmup_steps or set "
                                   "run.grad_clip.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.run.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.run.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(shared[1]), {k: float(v) for k, v in zip(names, shared[2:])}, grad_norm

    def _end_epoch(self, train_loss: float, epochs_log: _CsvLog | None, tb, t0: float) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        # every val_every_epochs-th epoch, and the run's last one whatever the cadence (best.pt covers the end)
        validate = self.run.val_every_epochs > 0 and (self.epoch % self.run.val_every_epochs == 0 or self.finished())
        with self._closing_epoch():
            self._log_epoch(self.epoch, train_loss, validate, epochs_log, tb, t0)
            self.save()

    @contextlib.contextmanager
    def _closing_epoch(self):
        """An epoch's validation, its epochs.csv row, plot and best.pt, then last.pt: a further stop signal after
        the validation waits for the rest (a second or so), as during a checkpoint write (_on_stop_signal); one
        there aborted and lost the epoch, although the first signal's message had promised a save."""
        self._in_epoch_end = True
        try:
            yield
        finally:
            self._in_epoch_end = False

    def _log_epoch(self, epoch: int, train_loss: float, validate: bool, epochs_log: _CsvLog | None, tb,
                   t0: float) -> None:
        """Validates (when ``validate``), writes epochs.csv's row for ``epoch`` and best.pt when the validation
        MSE is the lowest so far. A resumed run drops the row of an epoch it had not finished (_CsvLog)."""
        val = None
        if validate:
            if self._stop_requested():  # heard in the epoch's last step: stop now, not after a validation of minutes
                self._stop_with_validation_pending(epoch, train_loss)
            if self.dist.main:
                try:
                    val = self.validate()
                except _ValidationAbandoned:  # a second signal (one process only: _on_stop_signal)
                    if self.progress:
                        tqdm.write(f"stopping now: validation skipped, saving last.pt (step {self.step})",
                                   file=sys.stderr)
                    self._stop_with_validation_pending(epoch, train_loss)
            if self.dist.world_size > 1:  # the other ranks wait here, then learn the result
                box = [val]
                dist.broadcast_object_list(box, src=0)
                val = box[0]
        if self.dist.main:
            row = {"epoch": epoch, "step": self.step, "train_loss": train_loss,
                   "elapsed_s": time.perf_counter() - t0}
            if val is not None:
                row.update({f"val_{k}": v for k, v in val.items()})
                if tb is not None:
                    for k, v in val.items():
                        tb.add_scalar(f"val/{k}", v, epoch)
            epochs_log.write(row)
            if val is not None:
                from diffuma.viz import plot_training_dynamics

                n_val = len(self.val_set) if self.run.val_max_sequences is None else \
                    min(len(self.val_set), self.run.val_max_sequences)
                plot_training_dynamics(epochs_log.rows, self.out / "training_dynamics.png", baselines=self.baselines_val,
                                       title=dynamics_title(self.config["model"], self.out, n_val, len(self.val_set)),
                                       model=self.config["model"]["name"])  # (the legend said "model")
        if val is not None and val["mse"] < self.best_val_mse:
            self.best_val_mse = val["mse"]
            self.save("best.pt")


def dynamics_title(model: dict, out: Path, n_val: int, n_total: int) -> str:
    """The title of training_dynamics.png: model, preset, run folder (with its parent: "run demo/run", where the
    folder's name alone gave "run run") and validation set size."""
    folder = Path(out)
    run = f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name
    return (f"{model['name']} '{model.get('preset') or 'default'}', run {run}: validation on {n_val} of "
            f"{n_total} val sequences (run.val_max_sequences)")


def _max_over_ranks(value: float, device: torch.device) -> float:
    """The largest of every torchrun rank's ``value`` (all ranks call it)."""
    t = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


# run settings that change how a run is carried out, not a number it produces (CPU runs are bit-identical with
# 0 or 2 loader workers, whatever the checkpoint and log cadence): a resume may change them
RESUME_MAY_CHANGE = ("num_workers", "checkpoint_every_steps", "log_every_steps")


def _without_how(config: dict) -> dict:
    """``config`` without the ``run`` settings of :data:`RESUME_MAY_CHANGE`."""
    return {**config, "run": {k: v for k, v in config.get("run", {}).items() if k not in RESUME_MAY_CHANGE}}


def _plain(x):
    """Tuples as lists, recursively: a config from YAML and a model config from its dataclass compare alike."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def _config_diff(a: dict, b: dict) -> str:
    out = []
    for section in ("model", "run"):
        sa, sb = a.get(section, {}), b.get(section, {})
        for k in sorted(set(sa) | set(sb)):
            if sa.get(k) != sb.get(k):
                out.append(f"{section}.{k}: saved {sa.get(k)!r} vs given {sb.get(k)!r}")
    return "; ".join(out) or "different structure"


def _tensorboard(path: Path, purge_step: int | None = None):
    """A SummaryWriter when the tensorboard package is installed, else None (CSV logs are always written).
    ``purge_step``: TensorBoard hides the events of earlier files at this global step and later (a resumed
    run's first step: the steps a killed run logged after its last checkpoint are redone, not shown twice;
    validation is logged per epoch, and epoch <= step, so it is never hidden by this)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


DATA_FIELDS = ("in_frames", "out_frames", "channels", "height", "width")


def build_trainer(config: dict | None, data: str | Path, out: str | Path, resume: bool = False,
                  progress: bool = True) -> Trainer:
    """The Trainer ``train_from_config`` runs: resolved config, dataset, seeded model. See there."""
    out = Path(out)
    check_run_folder(out)
    # the folder is claimed now, before anything in it is read, not when fit starts: a second trainer in between
    # (building a model takes seconds) found no lock and was told "nothing to resume" or started over the first.
    # Under torchrun only rank 0 takes it (two ranks probing at once found each other's probe).
    created, new_lock = not out.exists(), not (out / LOCK_FILE).exists()
    lock = claim_run_folder(out) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        if not resume:
            check_fresh_run_folder(out)
        trainer = _build_trainer(config, data, out, resume, progress)
    except BaseException:  # refused: leave the folder as it was (no lock file, no folder this made)
        if lock is not None:
            if new_lock:
                release_lock(out / LOCK_FILE, lock)
            else:
                os.close(lock)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()
        raise
    trainer.lock_fd = lock
    return trainer


def _build_trainer(config: dict | None, data: str | Path, out: Path, resume: bool, progress: bool) -> Trainer:
    if resume:
        saved = load_checkpoint(resume_checkpoint(out))["config"]
        if config is None:
            config = {"model": {k: v for k, v in saved["model"].items() if k not in DATA_FIELDS},
                      "run": saved["run"]}
    if config is None:
        raise ConfigError("a config is needed to start a run (only --resume can do without)")
    cfg = resolve_config(config)
    run = run_config_from_dict(cfg["run"])
    info = dataset_info(data, run.in_frames, run.out_frames)
    for k in DATA_FIELDS:
        # a run's own config.yaml lists them as the dataset gave them: the same values are taken as they are
        if k in cfg["model"] and cfg["model"][k] != info[k]:
            how = ("set run.in_frames / run.out_frames to change the frame counts" if k.endswith("_frames") else
                   "curate or import the data at another size to change it")
            raise ConfigError(f"model.{k} {cfg['model'][k]!r} differs from the dataset's {info[k]!r} ({data}): it comes "
                              f"from the dataset; {how}")
    cfg["model"].update({k: info[k] for k in DATA_FIELDS})
    if run.val_every_epochs > 0:  # (found after the first epoch's training before)
        try:
            check_ssim_size(info["height"], info["width"], data, "validation", "or set run.val_every_epochs=0")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    train_set, val_set = sequence_datasets(data, info, run.frame_offset)
    from diffuma.models.registry import build_model

    seed_everything(run.seed)
    model_fields = {k: v for k, v in cfg["model"].items() if k not in ("name", "preset")}
    model = build_model(cfg["model"]["name"], cfg["model"]["preset"], **model_fields)
    return Trainer(model, cfg, train_set, val_set, out, info, progress=progress)


def train_from_config(config: dict | None, data: str | Path, out: str | Path, resume: bool = False,
                      progress: bool = True) -> Path:
    """Trains the model ``config["model"]`` describes on the dataset at ``data``; returns the run folder ``out``.

    config: ``{"model": {"name": ..., "preset": ..., **field overrides}, "run": {RunConfig fields}}``. The model's
    in/out frame counts come from run.in_frames/out_frames or else the dataset attributes; channels, height and
    width always come from the dataset. With ``resume=True`` config may be None (the run's saved config is used).

    Errors: ConfigError (also a resume with another config or another dataset), CheckpointError (a damaged or
    unusable checkpoint; CheckpointWriteError when one cannot be written), RunFolderError (``out`` cannot be
    created, is a dataset or a recording, or another trainer holds it), FileExistsError / FileNotFoundError (a
    fresh run into a run folder / a resume with nothing to resume), TrainingDiverged, and TrainingInterrupted
    (SIGINT/SIGTERM: ``last.pt`` holds the last completed step).
    """
    try:
        run_dir = build_trainer(config, data, out, resume, progress).fit(resume=resume)
    except TrainingInterrupted:
        shutdown_distributed()  # every rank stopped at the same step: they leave the process group together
        raise
    shutdown_distributed()
    return run_dir

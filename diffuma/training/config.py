"""Run configuration: the ``RunConfig`` dataclass, YAML loading, ``--set key=value`` overrides, validation.

A config file has exactly two top-level sections (docs/training.md, "Config reference")::

    model:                 # which model, which preset, and any field of that model's @dataclass config
      name: diffuma
      preset: tiny
      l1_weight: 1.0       # (example field override)
    run:                   # every field of RunConfig below; unset fields take the defaults
      epochs: 10
      lr: 1.0e-3

Unknown keys anywhere are an error (with a did-you-mean suggestion); so are values of the wrong type or out
of range. ``--set run.lr=3e-4`` / ``--set model.depth=4`` override single fields; the value is parsed as YAML
(``3e-4`` -> float, ``true`` -> bool, ``[1, 2]`` -> list, ``null`` -> None).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config problem; the message names the file (when there is one) and the key."""


@dataclass
class RunConfig:
    # --- data ---
    in_frames: int | None = None  # input frames per sample; None = the dataset's `in_frames` attribute
    out_frames: int | None = None  # predicted frames per sample; None = the dataset's `out_frames` attribute
    frame_offset: int = 0  # first frame of each sequence used as input (SequenceDataset frame_offset)
    num_workers: int = 2  # DataLoader worker processes per training process (0 = read in the main process)
    # --- optimisation ---
    epochs: int = 10  # passes over the training split
    max_steps: int | None = None  # stop after this many optimiser steps (also the schedule length); None = epochs
    # Wall-clock training budget in minutes, counted over optimiser steps only (each step's wait for its batch,
    # forward, backward, update; not validation, checkpoints, logging); the schedule length is estimated from
    # the first steps' times (diffuma.training.budget). None = no budget
    max_minutes: float | None = None
    batch_size: int = 4  # sequences per optimiser step PER PROCESS (global batch = batch_size x world size)
    optimizer: str = "adamw"  # "adamw" | "adam"
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # decoupled (adamw) or L2 (adam) weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    schedule: str = "cosine"  # "cosine" (linear warm-up from 0, cosine to min_lr_ratio*lr) | "onecycle" | "constant"
    warmup_steps: int = 0  # warm-up length in optimiser steps (onecycle: the rising phase)
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr
    grad_clip: float | None = 1.0  # clip the global gradient L2 norm to this; None = no clipping
    precision: str = "auto"  # "auto" (bf16 if supported, else fp16+GradScaler; fp32 on CPU) | "bf16" | "fp16" | "fp32"
    ema_decay: float | None = None  # keep an exponential moving average of the weights with this decay; None = off
    seed: int = 0  # seeds weights, data order and the model's noise; CPU runs are bit-reproducible
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda"
    # --- validation, logging, checkpoints ---
    val_every_epochs: int = 1  # validate (MSE/MAE/SSIM/PSNR) every N epochs; 0 = never
    val_max_sequences: int | None = None  # validate on the first N val sequences only; None = all
    val_batch_size: int | None = None  # None = batch_size
    eval_with_ema: bool = True  # validate with the EMA weights when ema_decay is set
    checkpoint_every_steps: int = 0  # also write checkpoints/last.pt every N steps (0 = at epoch ends only)
    log_every_steps: int = 1  # write a steps.csv row every N steps


_CHOICES = {
    "optimizer": ("adamw", "adam"),
    "schedule": ("cosine", "onecycle", "constant"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "device": ("auto", "cpu", "cuda"),
}
_POSITIVE = ("epochs", "batch_size", "lr", "log_every_steps")
_NON_NEGATIVE = ("frame_offset", "num_workers", "weight_decay", "warmup_steps", "min_lr_ratio", "val_every_epochs",
                 "checkpoint_every_steps")
_POSITIVE_OR_NONE = ("in_frames", "out_frames", "max_steps", "max_minutes", "grad_clip", "val_max_sequences",
                     "val_batch_size")


def _unknown(kind: str, key: str, known, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"{where}unknown {kind} key {key!r}{hint}")


def _check_type(name: str, value, tp, where: str):
    """Returns value coerced to the annotated type (int -> float, list -> tuple) or raises ConfigError."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}run.{name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_check_type(name, v, a, where) for v, a in zip(value, args))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool) \
            or not isinstance(value, tp):
        raise ConfigError(f"{where}run.{name} must be {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp is float and not math.isfinite(value):  # torch would say "Invalid learning rate: nan", naming no key
        raise ConfigError(f"{where}run.{name} must be a finite number, got {value!r}")
    return value


def run_config_from_dict(d: dict, where: str = "") -> RunConfig:
    """Validated RunConfig from a dict of (some) fields; ``where`` prefixes error messages (e.g. a file name)."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}'run' must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(RunConfig)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    values = {}
    for key, value in d.items():
        if key not in known:
            raise _unknown("run", key, known, where)
        values[key] = _check_type(key, value, hints[key], where)
    cfg = RunConfig(**values)
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{where}run.{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    for name in _POSITIVE:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where}run.{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in _NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{where}run.{name} must be >= 0, got {getattr(cfg, name)!r}")
    for name in _POSITIVE_OR_NONE:
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ConfigError(f"{where}run.{name} must be > 0 or null, got {getattr(cfg, name)!r}")
    if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
        raise ConfigError(f"{where}run.ema_decay must be in (0, 1) or null, got {cfg.ema_decay!r}")
    if cfg.min_lr_ratio > 1.0:
        raise ConfigError(f"{where}run.min_lr_ratio must be <= 1, got {cfg.min_lr_ratio!r}")
    return cfg


def validate_model_section(m: dict, where: str = "") -> dict:
    """Checks the model section against the registry and the model's config dataclass; returns it unchanged."""
    from diffuma.models import registry

    if not isinstance(m, dict) or "name" not in m:
        raise ConfigError(f"{where}'model' must be a mapping with at least a 'name' "
                          f"(one of {', '.join(registry.list_models())})")
    name, preset = m["name"], m.get("preset", "default")
    if name not in registry.list_models():
        raise _unknown("model name", name, registry.list_models(), where)
    if preset not in registry.list_presets(name):
        raise ConfigError(f"{where}model.preset {preset!r} is not a preset of {name}; "
                          f"choose one of {', '.join(registry.list_presets(name))}")
    overrides = {k: v for k, v in m.items() if k not in ("name", "preset")}
    for key, value in overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}model.{key} must be a finite number, got {value!r}")
    try:
        cfg = registry.model_config(name, preset)
    except Exception as e:  # noqa: BLE001 - the registry's own message is the useful part
        raise ConfigError(f"{where}model {name}/{preset}: {e}") from e
    known = {f.name for f in dataclasses.fields(cfg)}
    for key in overrides:
        if key not in known:
            raise _unknown(f"model ({name})", key, known, where)
    try:
        registry.model_config(name, preset, **overrides)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{where}model {name}/{preset}: {e}") from e
    return m


def parse_override(text: str) -> tuple[list[str], object]:
    """'run.lr=3e-4' -> (['run', 'lr'], 0.0003). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. run.lr=3e-4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or parts[0] not in ("model", "run") or not parts[1]:
        raise ConfigError(f"--set {text!r}: key must be model.<field> or run.<field>")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from e
    return parts, value


def packaged_configs() -> list[str]:
    """Names of the configs shipped in diffuma/configs/ (usable as ``--config NAME``)."""
    root = resources.files("diffuma") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _config_text(name_or_path: str | Path) -> tuple[str, str]:
    p = Path(name_or_path)
    if p.is_file():
        return p.read_text(), str(p)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        raise ConfigError(f"{p}: config file not found")
    res = resources.files("diffuma") / "configs" / f"{p.name}.yaml"
    if not res.is_file():
        raise ConfigError(f"{name_or_path}: neither a config file nor a packaged config "
                          f"(packaged: {', '.join(packaged_configs())})")
    return res.read_text(), f"diffuma/configs/{p.name}.yaml"


def load_config(name_or_path: str | Path, overrides: typing.Iterable[str] = ()) -> dict:
    """Loads a packaged config by name or a YAML file by path, applies ``--set`` overrides, validates.

    Returns the resolved config dict ``{"model": {...}, "run": {every RunConfig field}}``.
    """
    text, where = _config_text(name_or_path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping with 'model' and 'run'")
    for text_ in overrides:
        (section, key), value = parse_override(text_)
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        if section == "run":  # a bad --set is blamed on the --set, not on the file
            _check_run_field(key, value, f"--set {text_!r}: ")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--set {text_!r}: model.{key} must be a finite number, got {value!r}")
        raw[section][key] = value
    return resolve_config(raw, where=f"{where}: ")


def _check_run_field(key: str, value, where: str) -> None:
    known = {f.name for f in dataclasses.fields(RunConfig)}
    if key not in known:
        raise _unknown("run", key, known, where)
    _check_type(key, value, typing.get_type_hints(RunConfig)[key], where)


def resolve_config(config: dict, where: str = "") -> dict:
    """Validates a ``{"model": ..., "run": ...}`` dict and fills every run default; returns a new dict."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}config must be a mapping with 'model' and 'run'")
    for key in config:
        if key not in ("model", "run"):
            raise _unknown("top-level", key, ("model", "run"), where)
    if "model" not in config:
        raise ConfigError(f"{where}missing the 'model' section")
    model = dict(validate_model_section(config["model"], where))
    model.setdefault("preset", "default")
    run = run_config_from_dict(config.get("run") or {}, where)
    return {"model": model, "run": run_to_dict(run)}


def run_to_dict(run: RunConfig) -> dict:
    d = dataclasses.asdict(run)
    d["betas"] = list(d["betas"])
    return d

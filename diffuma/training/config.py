"""Run configuration: the ``RunConfig`` model, YAML loading, ``--set key=value`` overrides, validation.

A config file has exactly two top-level sections (docs/training.md, "Config reference")::

    model:                 # which model, which preset, and any field of that model's @dataclass config
      name: diffuma
      preset: tiny
      l1_weight: 1.0       # (example field override)
    run:                   # every field of RunConfig below; unset fields take the defaults
      epochs: 10
      lr: 1.0e-3

Validated by the one config validator of chdl (acquisition.config_validation: strict pydantic models): unknown
keys anywhere are an error (with a did-you-mean suggestion); so are values of the wrong type (no coercion:
``2.5`` is not an int, ``true`` is not a number), NaN/inf, and values out of range; each error is one line,
``train.yaml: run.lr: must be a finite number, got nan``. ``--set run.lr=3e-4`` / ``--set model.depth=4``
override single fields; the value is parsed as YAML (``3e-4`` -> float, ``true`` -> bool, ``[1, 2]`` -> list,
``null`` -> None), and a bad one is blamed on its ``--set`` option.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import Field, Strict

from acquisition.config_validation import (ConfigError, Float, StrictConfig, YamlTuple, did_you_mean, load_yaml,
                                           validate)

__all__ = ["ConfigError", "RunConfig", "load_config", "resolve_config", "run_config_from_dict", "run_to_dict",
           "packaged_configs", "parse_override", "read_config", "validate_model_section"]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Beta = Annotated[Float, Field(ge=0, lt=1)]


class RunConfig(StrictConfig):
    """Every ``run:`` field, with its default and its allowed range (docs/training.md, "Config reference")."""

    # --- data ---
    in_frames: PositiveInt | None = None  # input frames per sample; None = the dataset's `in_frames` attribute
    out_frames: PositiveInt | None = None  # predicted frames per sample; None = the dataset's `out_frames` attribute
    frame_offset: NonNegativeInt = 0  # first frame of each sequence used as input (SequenceDataset frame_offset)
    num_workers: NonNegativeInt = 2  # DataLoader worker processes per training process (0 = read in the main process)
    # --- optimisation ---
    epochs: PositiveInt = 10  # passes over the training split
    max_steps: PositiveInt | None = None  # stop after this many optimiser steps (also the schedule length); None = epochs
    # Wall-clock training budget in minutes, counted over optimiser steps only (each step's wait for its batch,
    # forward, backward, update; not validation, checkpoints, logging); the schedule length is estimated from
    # the first steps' times (diffuma.training.budget). None = no budget
    max_minutes: PositiveFloat | None = None
    batch_size: PositiveInt = 4  # sequences per optimiser step PER PROCESS (global batch = batch_size x world size)
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: PositiveFloat = 1e-3  # peak learning rate
    weight_decay: NonNegativeFloat = 0.01  # decoupled (adamw) or L2 (adam) weight decay
    betas: YamlTuple[Beta, Beta] = (0.9, 0.999)  # Adam betas, each in [0, 1)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"  # cosine: linear warm-up (step s: lr*(s+1)/warmup_steps), cosine to min_lr_ratio*lr
    warmup_steps: NonNegativeInt = 0  # warm-up length in optimiser steps (onecycle: the rising phase)
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0  # cosine: final lr as a fraction of lr
    grad_clip: PositiveFloat | None = 1.0  # clip the global gradient L2 norm to this; None = no clipping
    # "auto" (bf16 if supported, else fp16+GradScaler; fp32 on CPU) | "bf16" | "fp16" | "fp32"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None  # EMA of the weights with this decay; None = off
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # seeds weights, data order and the model's noise (NumPy takes 0..2**32-1); CPU runs are bit-reproducible
    device: Literal["auto", "cpu", "cuda"] = "auto"  # "auto" = cuda if available
    # --- validation, logging, checkpoints ---
    val_every_epochs: NonNegativeInt = 1  # validate (MSE/MAE/SSIM/PSNR) every N epochs; 0 = never
    val_max_sequences: PositiveInt | None = None  # validate on the first N val sequences only; None = all
    val_batch_size: PositiveInt | None = None  # None = batch_size
    eval_with_ema: bool = True  # validate with the EMA weights when ema_decay is set
    checkpoint_every_steps: NonNegativeInt = 0  # also write checkpoints/last.pt every N steps (0 = at epoch ends only)
    log_every_steps: PositiveInt = 1  # write a steps.csv row every N steps


class _ConfigFile(StrictConfig):
    """The top level of a training config: the two sections (each validated on its own below)."""

    model: dict
    run: dict | None = None


def run_config_from_dict(d: dict | None, source: str = "", blame: dict | None = None) -> RunConfig:
    """Validated RunConfig from a dict of (some) fields; ConfigError ``<source>: run.<key>: <problem>``."""
    return validate(RunConfig, d or {}, source, prefix=("run",), blame=blame)


def _yaml_type(tp):
    """A model Config dataclass annotation as a strict pydantic type that accepts YAML lists for tuples."""
    if tp is tuple:
        return Annotated[tuple, Strict(False)]
    if typing.get_origin(tp) is tuple:
        items = tuple(... if a is ... else _yaml_type(a) for a in typing.get_args(tp))
        return YamlTuple[items]
    return Annotated[tp, Strict()] if tp in (int, float, str, bool) else tp


def _model_section_model(name: str) -> type[StrictConfig]:
    """A strict pydantic model of ``{name, preset, <every field of the model's Config dataclass>}``."""
    from diffuma.models import registry

    cls = registry.model_class(name).Config
    hints = typing.get_type_hints(cls)
    fields = {f.name: (_yaml_type(hints[f.name]), None) for f in dataclasses.fields(cls)}
    return pydantic.create_model(f"{name}_model_section", __base__=StrictConfig,
                                 name=(str, ...), preset=(str, "default"), **fields)


def validate_model_section(m: dict, source: str = "", blame: dict | None = None) -> dict:
    """Checks the model section against the registry and the model's config dataclass; returns it unchanged."""
    from diffuma.models import registry

    at = f"{source}: " if source else ""
    blame = blame or {}

    def where(key: str) -> str:  # the --set option that gave the key, else the file
        return f"{blame[('model', key)]}: " if ("model", key) in blame else at

    if isinstance(m, dict) and "name" in m and not isinstance(m["name"], str):
        raise ConfigError(f"{where('name')}model.name: must be a model name (one of {', '.join(registry.list_models())}),"
                          f" not {m['name']!r}")
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise ConfigError(f"{at}model: must be a mapping with at least a 'name' "
                          f"(one of {', '.join(registry.list_models())})")
    name, preset = m["name"], m.get("preset", "default")
    if name not in registry.list_models():
        raise ConfigError(f"{where('name')}model.name: unknown model {name!r}"
                          f"{did_you_mean(name, registry.list_models())}")
    validate(_model_section_model(name), m, source, prefix=("model",), blame=blame)

    if preset not in registry.list_presets(name):
        raise ConfigError(f"{where('preset')}model.preset: {preset!r} is not a preset of {name}"
                          f"{did_you_mean(preset, registry.list_presets(name))}")
    overrides = {k: v for k, v in m.items() if k not in ("name", "preset")}
    try:
        registry.model_config(name, preset, **overrides)  # the dataclass's own cross-field checks
    except (ValueError, TypeError) as e:
        # the field the message is about, else another it names that came from a --set (a cross-field rule broken
        # by an override of the other field: dit_heads=3 against the file's dit_dim)
        named = [k for k in overrides if str(e).startswith(k)] or \
                [k for k in overrides if ("model", k) in blame and re.search(rf"\b{re.escape(k)}\b", str(e))]
        raise ConfigError(f"{where(named[0]) if named else at}model ({name}/{preset}): {e}") from None
    return m


def parse_override(text: str) -> tuple[list[str], object]:
    """'run.lr=3e-4' -> (['run', 'lr'], 0.0003). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. run.lr=3e-4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or parts[0] not in ("model", "run") or not parts[1]:
        raise ConfigError(f"--set {text!r}: key must be model.<field> or run.<field>")
    value = load_yaml(raw, f"--set {text}") if raw.strip() else None
    return parts, value


def packaged_configs() -> list[str]:
    """Names of the configs shipped in diffuma/configs/ (usable as ``--config NAME``)."""
    root = resources.files("diffuma") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _config_text(name_or_path: str | Path) -> tuple[str, str]:
    p = Path(name_or_path)
    if p.is_file():
        try:
            return p.read_text(encoding="utf-8"), str(p)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot read config ({getattr(e, 'strerror', None) or e})") from None
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        raise ConfigError(f"{p}: config file not found")
    res = resources.files("diffuma") / "configs" / f"{p.name}.yaml"
    if not res.is_file():
        raise ConfigError(f"{name_or_path}: neither a config file nor a packaged config "
                          f"(packaged: {', '.join(packaged_configs())})")
    return res.read_text(encoding="utf-8"), f"diffuma/configs/{p.name}.yaml"


def load_config(name_or_path: str | Path, overrides: typing.Iterable[str] = ()) -> dict:
    """Loads a packaged config by name or a YAML file by path, applies ``--set`` overrides, validates.

    Returns the resolved config dict ``{"model": {...}, "run": {every RunConfig field}}``. Raises ConfigError
    (one line: the file, or the ``--set`` option a bad value came from, and the dotted key).
    """
    return resolve_config(*read_config(name_or_path, overrides))


def read_config(name_or_path: str | Path, overrides: typing.Iterable[str] = ()) -> tuple[dict, str, dict]:
    """The first, torch-free half of :func:`load_config`: the file, its YAML, its top level, ``--set`` and the
    run section are checked; returns ``(config, source, blame)`` for :func:`resolve_config` (which checks the
    model section; that imports the model, and so torch)."""
    text, source = _config_text(name_or_path)
    raw = load_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping with 'model' and 'run'")
    blame = {}
    for text_ in overrides:
        (section, key), value = parse_override(text_)
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][key] = value
        blame[(section, key)] = f"--set {text_}"
    validate(_ConfigFile, raw, source, blame=blame)
    run_config_from_dict(raw.get("run"), source, blame)
    return raw, source, blame


def resolve_config(config: dict, source: str = "", blame: dict | None = None) -> dict:
    """Validates a ``{"model": ..., "run": ...}`` dict and fills every run default; returns a new dict.

    ``source`` names where the dict came from in error messages (a file); ``blame`` maps (section, key) to the
    command-line option that set it (see acquisition.config_validation.validate). The run section is checked
    before the model section, which imports the model (and so torch)."""
    validate(_ConfigFile, config, source, blame=blame)
    run = run_config_from_dict(config.get("run"), source, blame)
    model = dict(validate_model_section(config["model"], source, blame))
    model.setdefault("preset", "default")
    return {"model": model, "run": run_to_dict(run)}


def attribute(error: ConfigError, source: str, blame: dict) -> ConfigError:
    """``error`` (a message that starts with the dotted key it is about, e.g. "model.height 64 differs from the
    dataset's 150", raised where the config meets the machine or the data) prefixed with where that key's value came
    from: its ``--set`` option (``blame``), else the config file ``source``; unchanged if it names no key."""
    import re

    m = re.match(r"(model|run)\.(\w+)", str(error))
    if not m or not source or str(error).startswith(f"{source}: ") or str(error).startswith("--set "):
        return error
    where = blame.get((m.group(1), m.group(2)), source)
    return ConfigError(f"{where}: {error}")


def run_to_dict(run: RunConfig) -> dict:
    """Every RunConfig field as plain YAML/JSON values (betas as a list)."""
    return run.to_dict()

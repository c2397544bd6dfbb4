"""The model registry: name -> model class, imported lazily so one model's import cost (or failure)
never touches another. Every model module defines a ``Config`` dataclass (on the class) and a
module-level ``PRESETS`` dict of named field overrides; see ``docs/model.md``.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch
import torch.nn as nn

# name -> "module:Class". The class has a ``Config`` dataclass attribute and its module a PRESETS dict.
MODELS: dict[str, str] = {
    "diffuma": "diffuma.models.diffuma:DIFFUMA",
    "convlstm": "diffuma.models.convlstm:ConvLSTM",
    "predrnn": "diffuma.models.predrnn:PredRNN",
    "predrnn_v2": "diffuma.models.predrnn_v2:PredRNNv2",
    "e3dlstm": "diffuma.models.e3dlstm:E3DLSTM",
    "simvp": "diffuma.models.simvp:SimVP",
    "pastnet": "diffuma.models.pastnet:PastNet",
}


def list_models() -> list[str]:
    return list(MODELS)


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def list_presets(name: str) -> list[str]:
    cls = model_class(name)
    return list(importlib.import_module(cls.__module__).PRESETS)


def model_config(name: str, preset: str | None = "default", **overrides):
    """The model's config dataclass: the preset's fields (None: the dataclass defaults alone), then
    ``overrides``. Unknown fields are an error."""
    cls = model_class(name)
    presets = importlib.import_module(cls.__module__).PRESETS
    if preset is not None and preset not in presets:
        raise KeyError(f"unknown preset {preset!r} for model {name!r} (known: {', '.join(presets)})")
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    values = {**(presets[preset] if preset is not None else {}), **overrides}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TypeError(f"unknown config field(s) for {name}: {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    return cls.Config(**values)


def build_model(name: str, preset: str | None = "default", **overrides) -> nn.Module:
    """Instantiate a registered model from a preset plus field overrides."""
    return model_class(name)(model_config(name, preset, **overrides))


def check_frames(model: nn.Module, x: torch.Tensor, *, any_in_frames: bool = False) -> None:
    """ValueError (one line naming the model and both shapes) unless ``x`` is (B, T_in, C, H, W) with the model
    config's ``channels`` and, unless ``any_in_frames`` (the recurrent models), its ``in_frames``. A wrong input
    gave torch's own error, naming neither ("mat1 and mat2 shapes cannot be multiplied (768x6 and 4x3)")."""
    cfg = model.config
    want = ("B", "any" if any_in_frames else cfg.in_frames, cfg.channels, "H", "W")
    got = tuple(x.shape)
    if len(got) != 5 or any(isinstance(w, int) and g != w for g, w in zip(got, want)):
        raise ValueError(f"{type(model).__name__}: input of shape {got}; it takes (B, T_in, C, H, W) = "
                         f"({', '.join(map(str, want))}): T_in input frames of C channels")

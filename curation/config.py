"""Curation settings: QC thresholds, reconstruction limit, split and sharding. Defaults here; any
subset can be overridden from a YAML file (``chdl curate --config qc.yaml``), e.g.::

    qc:
      floors: {sharpness: 0.12, misregistration_px: 1.0}
      z: 6.0
    max_bad_frames: 2
    split: {block_lanes: 2, seed: 0, val_fraction: 0.5}

Everything here is recorded in the dataset's provenance (``provenance.config``), together with the
per-run baselines the thresholds were combined with, so a dataset says exactly how it was curated.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from curation.qc import SCORE_NAMES


def _default_floors() -> dict[str, float]:
    # Smallest deviation that is ever flagged, per score (see curation/qc.py for the score definitions).
    # Chosen just below the simulator's visibility floor (docs/curation.md has the measured separation):
    return {
        "sharpness": 0.08,  # log fine/coarse gradient energy: -0.08 = ~8% less fine detail than neighbours
        "misregistration_px": 1.0,  # full-resolution px off where the stage step puts the frame
        "brightness": 0.035,  # |log mean ratio|: ~3.5% brighter/darker than the aligned neighbours
        "contrast": 0.10,  # |log std ratio|: ~10% more/less contrast (ignored where sharpness fired)
        "shading": 0.10,  # edge-to-edge log-ratio slope: a 10% shadow gradient
        "banding": 0.045,  # robust spread of the row log-ratio profile: ~4.5% flicker bands
    }


@dataclasses.dataclass
class QCConfig:
    floors: dict[str, float] = dataclasses.field(default_factory=_default_floors)  # per-score minimum threshold
    z: float = 6.0  # threshold = max(floor, z * run sigma); sigma = 1.4826 * MAD over the calibration sample
    calibration_sequences: int = 8  # sequences per run (evenly spaced) the run baseline is measured on


@dataclasses.dataclass
class SplitConfig:
    block_lanes: int = 2  # lanes per block; a block goes wholly to train or val (neighbours never straddle)
    val_fraction: float = 0.5  # the paper splits evenly
    seed: int = 0  # order in which blocks are dealt (deterministic)


@dataclasses.dataclass
class CurateConfig:
    qc: QCConfig = dataclasses.field(default_factory=QCConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    frames_per_sequence: int = 10  # T: positions per lane sequence (the paper: 10)
    in_frames: int = 5  # model input frames recorded in the dataset attrs
    out_frames: int = 5  # model target frames
    max_bad_frames: int = 2  # a sequence with more bad (flagged or missing) frames is excluded
    sequences_per_shard: int = 16  # S: sequences per zarr shard, the unit of work of one worker
    thumbnail_width: int = 160  # px, thumbnails in the QC report

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def _merge(obj: Any, data: dict, where: str) -> None:
    for key, value in data.items():
        if not hasattr(obj, key):
            known = ", ".join(f.name for f in dataclasses.fields(obj))
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping")
            _merge(current, value, f"{where}: {key}")
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping")
            unknown = set(value) - set(current)
            if unknown:
                raise ConfigError(f"{where}: {key}: unknown score(s) {sorted(unknown)} (known: {', '.join(SCORE_NAMES)})")
            for k, v in value.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"{where}: {key}.{k} must be a finite number, got {v!r}")
            current.update({k: float(v) for k, v in value.items()})
        else:
            try:
                setattr(obj, key, type(current)(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} must be {type(current).__name__}, got {value!r}") from None
            if isinstance(getattr(obj, key), float) and not math.isfinite(getattr(obj, key)):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")


def load_config(path: str | Path | None = None) -> CurateConfig:
    """Defaults, overridden by the YAML file at ``path`` (ConfigError naming the file on a bad file)."""
    cfg = CurateConfig()
    if path is None:
        return cfg
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping")
    _merge(cfg, data, str(path))
    validate(cfg, str(path))
    return cfg


def validate(cfg: CurateConfig, where: str = "config") -> None:
    if cfg.frames_per_sequence < 2:
        raise ConfigError(f"{where}: frames_per_sequence must be >= 2")
    if cfg.in_frames + cfg.out_frames > cfg.frames_per_sequence:
        raise ConfigError(f"{where}: in_frames + out_frames exceeds frames_per_sequence")
    if not 0 <= cfg.max_bad_frames <= cfg.frames_per_sequence - 2:
        raise ConfigError(f"{where}: max_bad_frames must be between 0 and frames_per_sequence - 2")
    if cfg.sequences_per_shard < 1 or cfg.split.block_lanes < 1:
        raise ConfigError(f"{where}: sequences_per_shard and split.block_lanes must be >= 1")
    if not 0.0 <= cfg.split.val_fraction <= 1.0:
        raise ConfigError(f"{where}: split.val_fraction must be in [0, 1]")
    if any(v < 0 for v in cfg.qc.floors.values()) or cfg.qc.z < 0:
        raise ConfigError(f"{where}: qc floors and z must be >= 0")

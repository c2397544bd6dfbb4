"""Curation settings: QC thresholds, reconstruction limit, split and sharding. Defaults here; any
subset can be overridden from a YAML file (``chdl curate --config qc.yaml``), e.g.::

    qc:
      floors: {sharpness: 0.12, misregistration_px: 1.0}
      z: {misregistration_px: 6.0}   # or one number for all six scores
      z_sequence: 4.0
    max_bad_frames: 2
    split: {block_lanes: 2, seed: 0, val_fraction: 0.5, test_fraction: 0.0}

Everything here is recorded in the dataset's provenance (``provenance.config``), together with the
per-run baselines the thresholds were combined with, so a dataset says exactly how it was curated.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from acquisition.config_validation import ConfigError, StrictConfig, load_yaml, validate
from curation.qc import SCORE_NAMES

__all__ = ["ConfigError", "CurateConfig", "QCConfig", "SplitConfig", "Floors", "ZFactors", "load_config", "validate_config"]

# Floors and z factors beyond 1e6 mean "never flag" as well as 1e6 does; above ~3e38 they overflowed float32
# in the report's histograms after every shard was written.
LARGEST = 1e6
NonNegativeFloat = Annotated[float, Field(ge=0, le=LARGEST)]


class _PerScore(StrictConfig):
    """One value per QC score, in score order; indexable like a dict (``floors["sharpness"]``)."""

    def __getitem__(self, name: str) -> float:
        return getattr(self, name)

    def values(self) -> list[float]:
        return [getattr(self, n) for n in SCORE_NAMES]


class Floors(_PerScore):
    """Smallest deviation that is ever flagged, per score (see curation/qc.py for the score definitions).

    Chosen just below the simulator's visibility floor (docs/curation.md has the measured separation)."""

    sharpness: NonNegativeFloat = 0.08  # log fine/coarse gradient energy: -0.08 = ~8% less fine detail than neighbours
    misregistration_px: NonNegativeFloat = 1.0  # full-resolution px off where the stage step puts the frame
    brightness: NonNegativeFloat = 0.035  # |log mean ratio|: ~3.5% brighter/darker than the aligned neighbours
    contrast: NonNegativeFloat = 0.10  # |log std ratio|: ~10% more/less contrast (ignored where sharpness fired)
    shading: NonNegativeFloat = 0.10  # edge-to-edge log-ratio slope: a 10% shadow gradient
    banding: NonNegativeFloat = 0.045  # robust spread of the row log-ratio profile: ~4.5% flicker bands


class ZFactors(_PerScore):
    """Run-noise multiplier per score: threshold = max(floor, z * sigma_run). Per score because the
    scores' spreads differ in shape: the misregistration distance has a long tail on real footage (a
    hand-held camera's natural jerks), the photometric scores do not. Defaults tuned on real footage
    (tools/bench_qc_real.py on cup.mp4 + tree.avi: the smallest values from {3, ..., 30} whose flags
    on the clean clips stay within the false-flag bars; docs/curation.md, "Real footage"). A YAML
    scalar (``z: 6``) sets all six."""

    sharpness: NonNegativeFloat = 3.0
    misregistration_px: NonNegativeFloat = 6.0
    brightness: NonNegativeFloat = 3.0
    contrast: NonNegativeFloat = 3.0
    shading: NonNegativeFloat = 3.0
    banding: NonNegativeFloat = 3.0

    @model_validator(mode="before")
    @classmethod
    def _scalar_sets_all(cls, data):
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            # checked here, so that an error names the key written (qc.z), not the first score it was copied to
            if not math.isfinite(data):
                raise ValueError(f"must be a finite number, got {data!r}")
            if not 0 <= data <= LARGEST:
                raise ValueError(f"must be in [0, {LARGEST:g}], got {data!r}")
            return {n: data for n in SCORE_NAMES}
        if not isinstance(data, dict):  # (a quoted "3" was told "must be a mapping": a number is allowed too)
            raise ValueError(f"must be a number (for all six scores) or a mapping of score to number, got {data!r}")
        return data


assert tuple(Floors.model_fields) == SCORE_NAMES == tuple(ZFactors.model_fields), "one value per QC score, in score order"


class QCConfig(StrictConfig):
    floors: Floors = Field(default_factory=Floors)  # per-score minimum threshold
    z: ZFactors = Field(default_factory=ZFactors)  # per-score run-noise multiplier (sigma = 1.4826 * MAD over the calibration sample)
    z_sequence: NonNegativeFloat = 4.0  # thresholds rise to z_sequence x the score's spread over the sequence's own frames (0: off)
    calibration_sequences: Annotated[int, Field(ge=1)] = 8  # sequences per run (evenly spaced) the baseline is measured on


class SplitConfig(StrictConfig):
    block_lanes: Annotated[int, Field(ge=1)] = 2  # lanes per block; a block goes wholly to one split
    val_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5  # the paper splits evenly
    # a held-out test split, dealt like val: never trained on or used to choose a checkpoint (0: none, the paper's
    # train/val; chdl eval --split test scores it)
    test_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    seed: int = 0  # order in which blocks are dealt (deterministic)

    @model_validator(mode="after")
    def _fractions_leave_some_for_training(self):
        if self.val_fraction + self.test_fraction > 1:
            raise ValueError(f"test_fraction: val_fraction + test_fraction ({self.val_fraction} + {self.test_fraction}) "
                             "exceeds 1")
        return self


class CurateConfig(StrictConfig):
    qc: QCConfig = Field(default_factory=QCConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    frames_per_sequence: Annotated[int, Field(ge=2)] = 10  # T: positions per lane sequence (the paper: 10)
    in_frames: Annotated[int, Field(ge=1)] = 5  # model input frames recorded in the dataset attrs
    out_frames: Annotated[int, Field(ge=1)] = 5  # model target frames
    max_bad_frames: Annotated[int, Field(ge=0)] = 2  # a sequence with more bad (flagged or missing) frames is excluded
    sequences_per_shard: Annotated[int, Field(ge=1)] = 16  # S: sequences per zarr shard, the unit of work of one worker
    thumbnail_width: Annotated[int, Field(ge=16, le=1024)] = 160  # px, thumbnails in the QC report (each one is in the HTML)

    @model_validator(mode="after")
    def _fits_in_a_sequence(self):
        # (the message starts with the key, as a field's own error does: `FILE: key: problem`; the key is one the
        # file set: `frames_per_sequence: 3` alone was reported against in_frames, which it did not mention)
        given = self.model_fields_set
        if self.in_frames + self.out_frames > self.frames_per_sequence:
            key = next((k for k in ("in_frames", "out_frames", "frames_per_sequence") if k in given), "in_frames")
            raise ValueError(f"{key}: in_frames + out_frames ({self.in_frames} + {self.out_frames}) exceeds "
                             f"frames_per_sequence ({self.frames_per_sequence})")
        if self.max_bad_frames > self.frames_per_sequence - 2:
            key = "frames_per_sequence" if "frames_per_sequence" in given and "max_bad_frames" not in given \
                else "max_bad_frames"
            raise ValueError(f"{key}: max_bad_frames ({self.max_bad_frames}) must be <= frames_per_sequence - 2 "
                             f"({self.frames_per_sequence - 2})")
        return self


def load_config(path: str | Path | None = None) -> CurateConfig:
    """Defaults, overridden by the YAML file at ``path``; ConfigError ``<file>: <dotted key>: <problem>``."""
    if path is None:
        return CurateConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({getattr(e, 'strerror', None) or e})") from None
    data = load_yaml(text, str(path))
    return validate_config({} if data is None else data, str(path))


def validate_config(data: dict, source: str = "config") -> CurateConfig:
    """CurateConfig from a dict of (some) settings: strict types, no unknown keys, finite and in range."""
    return validate(CurateConfig, data, source)

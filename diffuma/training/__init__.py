"""Training DIFFUMA and the baselines on curated datasets: configs, the trainer, checkpoints.

Entry points: ``train_from_config`` (what ``chdl train`` runs) and ``load_config`` (YAML + ``--set``).
"""

from diffuma.training.config import ConfigError, RunConfig, load_config, packaged_configs, resolve_config
from diffuma.training.trainer import Trainer, TrainingDiverged, train_from_config

__all__ = ["ConfigError", "RunConfig", "Trainer", "TrainingDiverged", "load_config", "packaged_configs",
           "resolve_config", "train_from_config"]

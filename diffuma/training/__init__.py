"""Training DIFFUMA and the baselines on curated datasets: configs, the trainer, checkpoints.

Entry points: ``train_from_config`` (what ``chdl train`` runs) and ``load_config`` (YAML + ``--set``).
The trainer (and so torch) is imported only when one of its names is used, so config errors are fast.
"""

from diffuma.training.config import ConfigError, RunConfig, load_config, packaged_configs, resolve_config

__all__ = ["ConfigError", "RunConfig", "RunFolderError", "Trainer", "TrainingDiverged", "TrainingInterrupted",
           "load_config", "packaged_configs", "resolve_config", "train_from_config"]


def __getattr__(name: str):
    if name in ("Trainer", "TrainingDiverged", "TrainingInterrupted", "RunFolderError", "train_from_config"):
        from diffuma.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""DIFFUMA and baselines: models, training, evaluation."""

"""Video-prediction models. Build them through :mod:`diffuma.models.registry`."""

import pytest

from train_helpers import write_moving_square_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return write_moving_square_dataset(tmp_path_factory.mktemp("data") / "squares.zarr")


@pytest.fixture
def standin(monkeypatch):
    """Registers the stand-in model as "standin" in the model registry for the duration of a test."""
    from diffuma.models import registry

    monkeypatch.setitem(registry.MODELS, "standin", "standin_model:StandIn")
    return "standin"

"""Camera backends and the one registry that maps a camera alias to an opened-able :class:`Camera`.

How a ``--camera ALIAS`` becomes a camera (see :func:`open_camera`):

1. The alias has an entry in the camera config (``acquisition.camera_config``): its ``backend`` key
   (default ``"gentl"``) picks the backend, and the whole entry is passed to the backend as ``options``.
2. Otherwise the alias is ``<prefix><n>``:
   - ``prefix`` names a registered backend (``sim0`` -> backend ``"sim"``, options ``{"index": 0}``);
   - ``prefix`` names a GenTL transport (``gige0``/``gev0`` -> the n-th GigE Vision device sorted by
     serial, ``u3v0``, ``custom0`` ...): the GenTL backend's fallback, which warns that the alias is not
     pinned to a serial number.

Plugging in a backend (this is the hook the simulator uses)
-----------------------------------------------------------
Add one line to :data:`BACKENDS`: ``name -> "module:function"`` (imported lazily, only when used, so a
backend with heavy or optional dependencies costs nothing until selected). The function is::

    def open_<name>_camera(alias: str, options: dict, config: CameraConfig) -> acquisition.backends.base.Camera

It returns a camera that is NOT yet opened (capture calls ``camera.open()`` / ``close()`` through the
context manager). ``options`` is the alias's camera-config entry (all keys, including ``backend``), or
``{"index": n}`` for a bare ``<name><n>`` alias; ``config`` is the whole camera config (most backends
ignore it; GenTL reads its producer list). Raise :class:`CameraError` with a one-line message for
an alias/option it cannot serve.

Optionally add ``name -> "module:function"`` to :data:`LISTERS` so ``chdl cameras`` shows the backend's
cameras::

    def list_<name>_cameras(config: CameraConfig) -> list[tuple[str, CameraInfo]]   # (alias, info)

A lister whose module is not importable (e.g. the simulator not installed yet) is skipped silently.
"""

from __future__ import annotations

import importlib
import re
import warnings
from typing import TYPE_CHECKING, Callable

from acquisition.backends.base import Camera, CameraError, CameraInfo

if TYPE_CHECKING:  # camera_config imports backends.base, so only for annotations here
    from acquisition.camera_config import CameraConfig

# backend name -> "module:function" that opens a camera of that backend (lazy import string)
BACKENDS: dict[str, str] = {
    "gentl": "acquisition.backends.gentl:open_gentl_camera",
    "sim": "acquisition.backends.sim:open_sim_camera",
    "replay": "acquisition.backends.replay:open_replay_camera",
    "aravis": "acquisition.backends.aravis:open_aravis_camera",  # optional: needs the system libaravis-0.8
}

# backend name -> "module:function" listing its cameras for `chdl cameras` (optional per backend; aravis has
# none on purpose: its discovery broadcasts on every network interface)
LISTERS: dict[str, str] = {
    "gentl": "acquisition.backends.gentl:list_gentl_cameras",
    "sim": "acquisition.backends.sim:list_sim_cameras",
}

_ALIAS = re.compile(r"^([A-Za-z][A-Za-z0-9]*?)(\d+)$")


def _load(target: str) -> Callable:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve_alias(alias: str, config: CameraConfig) -> tuple[str, dict]:
    """``alias`` -> (backend name, options for that backend's open function). CameraError if unknown."""
    entry = config.cameras.get(alias)
    if entry is not None:
        backend = entry.get("backend", "gentl")
        if backend not in BACKENDS:
            raise CameraError(f"{config.source}: camera {alias!r} has unknown backend {backend!r} "
                              f"(known: {', '.join(sorted(BACKENDS))})")
        return backend, dict(entry)
    m = _ALIAS.match(alias)
    if m:
        prefix, index = m.group(1).lower(), int(m.group(2))
        if prefix in BACKENDS and prefix != "gentl":
            return prefix, {"index": index}
        from acquisition.backends.gentl import FALLBACK_TRANSPORTS

        if prefix in FALLBACK_TRANSPORTS:
            return "gentl", {"fallback": FALLBACK_TRANSPORTS[prefix], "index": index}
    known = ", ".join(sorted(config.cameras)) or "none"
    raise CameraError(f"unknown camera alias {alias!r}: not in the camera config ({config.source}; aliases: {known}) "
                      f"and not of the form gige<N>/u3v<N>/custom<N>/sim<N>")


def open_camera(alias: str, config: CameraConfig) -> Camera:
    """The (not yet opened) camera that ``alias`` selects."""
    backend, options = resolve_alias(alias, config)
    try:
        factory = _load(BACKENDS[backend])
    except (ImportError, AttributeError) as e:
        raise CameraError(f"camera {alias!r}: backend {backend!r} is not available ({e})") from None
    return factory(alias, options, config)


def list_cameras(config: CameraConfig) -> list[tuple[str, CameraInfo]]:
    """(alias, info) for every camera every backend can see. Backends that cannot load are skipped."""
    rows: list[tuple[str, CameraInfo]] = []
    for name, target in LISTERS.items():
        try:
            lister = _load(target)
        except (ImportError, AttributeError):
            if name == "gentl":
                raise
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.extend(lister(config))
    return rows

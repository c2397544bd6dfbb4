"""The camera config file: which GenTL producers to load and which physical camera each alias means.

Location, first found wins: ``--camera-config PATH`` > ``$CHDL_CAMERAS`` > ``$XDG_CONFIG_HOME/chdl/cameras.yaml``
(``~/.config/chdl/cameras.yaml``). No file is fine: then only ``$GENICAM_GENTL64_PATH`` producers and the
fallback aliases (``gige0`` ...) work. Format (YAML)::

    producers:                 # GenTL producers (.cti) to load in addition to $GENICAM_GENTL64_PATH
      - /opt/vendor/lib/vendor_gev.cti
      - viky                   # the viky test producer shipped inside the `genicam` wheel
    cameras:
      gige0:                   # alias used as `chdl capture --camera gige0`
        backend: gentl         # default; "sim" for the simulator, or any backend in acquisition.backends
        producer: /opt/vendor/lib/vendor_gev.cti   # optional: only look at this producer's devices
        serial: "22470012"     # stable key: serial number, else user_name, else address is matched
        user_name: lane-cam
        address: 192.168.10.21
        trigger_line: Line1    # optional: the input the encoder is wired to (default: the first Line*)
      sim0: {backend: sim}     # backend-specific options are passed through to the backend

A relative producer path is relative to the config file. The file is validated by the one config validator
(acquisition.config_validation): unknown keys in ``gentl`` and ``aravis`` entries are errors with a
did-you-mean suggestion, values must have the right type (a serial YAML reads as a number, ``serial: 12``, is refused: quote it;
``0012`` is the string "0012", chdl reading numbers as YAML 1.2 does), and every error is one line ``<file>: cameras.<alias>.<key>: <problem>``.
Simulator entries (``backend: sim``) are checked here too, against the simulator's options; entries of other
backends (``replay``) are passed to the backend, which checks its own options.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import ConfigDict, model_validator

from acquisition.backends.base import CameraError
from acquisition.config_validation import StrictConfig, load_yaml, validate

ENV_CONFIG = "CHDL_CAMERAS"
ENV_GENTL = "GENICAM_GENTL64_PATH"
VIKY = "viky"  # producer name that means the viky.cti inside the installed `genicam` package
KEYS = ("serial", "user_name", "address")  # stable keys, in the order they are tried


class _CameraFile(StrictConfig):
    producers: list[str] | None = None
    cameras: dict[str, dict] | None = None


class _Entry(StrictConfig):
    serial: str | None = None
    user_name: str | None = None
    address: str | None = None
    trigger_line: str | None = None


class _GenTLEntry(_Entry):
    backend: Literal["gentl"] = "gentl"
    producer: str | None = None

    @model_validator(mode="after")
    def _identified(self):
        if not any(getattr(self, k) for k in KEYS):
            raise ValueError(f"needs one of {', '.join(KEYS)} to identify the camera")
        return self


class _AravisEntry(_Entry):
    backend: Literal["aravis"]


class _OtherEntry(_Entry):
    """Any other backend: its options are checked by the backend when the camera is opened."""

    model_config = ConfigDict(extra="allow")
    backend: str


def _sim_entry() -> type[_Entry]:
    """The simulator's entry, checked like the rest of the file (strict types, did-you-mean, one line): its
    camera options and every SimConfig field except the capture settings (acquisition/backends/sim.py)."""
    from acquisition.backends.sim import _CAMERA_OPTIONS, _SETTINGS_FIELDS
    from acquisition.simulator import SimConfig

    hints = typing.get_type_hints(SimConfig)
    fields: dict = {"backend": (Literal["sim"], ...), "index": (int | None, None), "realtime": (bool | None, None),
                    "positions": (int | None, None), "step_um": (float | None, None)}
    assert set(fields) == _CAMERA_OPTIONS
    for f in dataclasses.fields(SimConfig):
        if f.name not in _SETTINGS_FIELDS:
            tp = hints[f.name]
            fields[f.name] = ((list[str] if typing.get_origin(tp) is tuple else tp) | None, None)
    return pydantic.create_model("SimEntry", __base__=_Entry, **fields)


def _entry_model(entry) -> type[_Entry]:
    backend = entry.get("backend", "gentl") if isinstance(entry, dict) else "gentl"
    if backend == "sim":
        return _sim_entry()
    return {"gentl": _GenTLEntry, "aravis": _AravisEntry}.get(backend, _OtherEntry)


@dataclasses.dataclass
class CameraConfig:
    source: str  # the file it came from, or "no camera config file" (for messages)
    producers: list[str]  # .cti paths from the file and the command line (not yet checked)
    cameras: dict[str, dict]  # alias -> entry

    def producer_paths(self) -> list[str]:
        """Every producer to load: $GENICAM_GENTL64_PATH folders' .cti files, then the configured ones."""
        paths: list[str] = []
        for folder in os.environ.get(ENV_GENTL, "").split(os.pathsep):
            if folder and os.path.isdir(folder):
                paths += sorted(str(p) for p in Path(folder).glob("*.cti"))
        for p in self.producers:
            if p not in paths:
                paths.append(p)
        return paths


def viky_cti() -> str:
    """Path of the viky GenTL producer shipped inside the ``genicam`` wheel."""
    import genicam

    return str(Path(genicam.__file__).resolve().parent / "viky.cti")


def default_config_path() -> Path | None:
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG]).expanduser()  # "~/x.yaml" quoted in a unit file, as --cti expands it
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = base / "chdl" / "cameras.yaml"
    return path if path.is_file() else None


def _producer(p: str, base: Path) -> str:
    if p == VIKY:
        return viky_cti()
    path = Path(p).expanduser()
    return str(path if path.is_absolute() else base / path)


def load_camera_config(path: str | os.PathLike | None = None, extra_producers: tuple[str, ...] = ()) -> CameraConfig:
    """Read the camera config (``path``, else the default location); ``extra_producers`` are --cti paths."""
    path = Path(path) if path is not None else default_config_path()
    producers = [_producer(p, Path.cwd()) for p in extra_producers]
    for p in producers:  # given on the command line: a wrong path is said even when the camera is not GenTL's
        if not os.path.isfile(p):  # (capture --camera sim0 --cti /missing.cti recorded, exit 0)
            raise CameraError(f"{p}: GenTL producer (.cti) not found")
    if path is None:
        return CameraConfig("no camera config file", producers, {})
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CameraError(f"{path}: camera config not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CameraError(f"{path}: cannot read camera config ({e})") from None
    data = load_yaml(text, str(path), error=CameraError)
    parsed = validate(_CameraFile, {} if data is None else data, str(path), error=CameraError)
    base = path.resolve().parent
    entries: dict[str, dict] = {}
    for alias, entry in (parsed.cameras or {}).items():
        entry = validate(_entry_model(entry), entry, str(path), prefix=("cameras", alias),
                         error=CameraError).model_dump(exclude_unset=True)
        if entry.get("backend") == "sim":  # the simulator's own range checks, named as the file's other errors
            from acquisition.backends.sim import SimOptionError, sim_config

            try:
                sim_config(entry)
            except SimOptionError as e:
                raise CameraError(f"{path}: cameras.{alias}{'.' if e.key else ': '}{e}") from None
        if "producer" in entry:
            entry["producer"] = _producer(entry["producer"], base)
        entries[alias] = entry
    for p in [_producer(p, base) for p in parsed.producers or []] + [e["producer"] for e in entries.values()
                                                                      if e.get("producer")]:
        if p not in producers:
            producers.append(p)
    return CameraConfig(str(path), producers, entries)

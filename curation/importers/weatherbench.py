"""WeatherBench 5.625° ERA5 netCDF files -> curated dataset (12 → 12 hourly sequences, uint16).

Input layout (as distributed by WeatherBench, Rasp et al. 2020)::

    ROOT/2m_temperature/2m_temperature_1979_5.625deg.nc      var t2m  (time, lat, lon)
    ROOT/temperature_850/temperature_850_1979_5.625deg.nc    var t    (time, lat, lon)
    ROOT/relative_humidity/relative_humidity_1979_5.625deg.nc  var r  (time, level, lat, lon)
    ROOT/u_component_of_wind/...   var u (time, level, lat, lon);  ROOT/10m_u_component_of_wind/... var u10
    ROOT/total_cloud_cover/...     var tcc (time, lat, lon)                      (one file per year)

The grid must be 32 × 64 (lat × lon). ``time`` is decoded from its CF ``units`` ("hours since
1979-01-01"); files are read with h5netcdf (no xarray), honouring ``scale_factor``/``add_offset``.

Sequences (defaults follow OpenSTL's WeatherBench-S, the setting the DIFFUMA paper's baselines use):

* 12 input + 12 target frames, ``step`` hours apart (default 1: the hourly data as is);
* a new sequence every ``stride`` hours (default 24: non-overlapping days — OpenSTL slides by 1 hour,
  which stores every frame 24 times; ``--stride 1`` reproduces that). A window must lie inside one
  split's years and have every frame present; windows across a gap, or where a year's file ends early, are
  skipped and counted (``chdl import`` warns); a requested year with no data at all is refused;
* train years 2010–2015; val years 2017–2018. OpenSTL trains on 2010–2015, validates on 2016 and
  reports its test metrics on 2017–2018; the val split of a chdl dataset is what ``chdl eval``/``bench``
  report on, so it holds the test years. ``--val-years 2016`` gives OpenSTL's validation year instead;
* multi-level variables: ``level`` (hPa) picks the level; without it the LAST level in the file is
  used, as OpenSTL does for humidity. The chosen level is recorded.

Normalisation and quantisation, per variable (= channel) ``c``, recorded in ``attrs["extra"]["variables"]``:

* ``mean``, ``std``: over every hour of the train years (OpenSTL standardises the same way);
  ``z = (x - mean) / std``;
* ``z_min``, ``z_max``: range of ``z`` over all train + val hours, so nothing is clipped;
* stored ``q = round((z - z_min) / (z_max - z_min) * 65535)`` as uint16, ``max_value`` 65535;
* inverse: physical ``x = q * scale + offset`` with ``scale = (z_max - z_min) * std / 65535`` and
  ``offset = mean + z_min * std`` (error ≤ scale / 2). A model sees ``q / 65535`` in [0, 1]; its MSE in
  standardised units (the paper's) is ``mse_01 * (z_max - z_min)**2`` (``mse_scale_standardised``).

Rows are stored north-up (WeatherBench stores latitude ascending, south first; they are flipped).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chdl.dataset import SPLIT_TRAIN, SPLIT_VAL
from curation.importers.common import ImporterInputError, write_sequences

GRID = (32, 64)  # (lat, lon) of the 5.625° grid
IN_FRAMES = OUT_FRAMES = 12
FRAMES = IN_FRAMES + OUT_FRAMES
MAX_Q = 65535  # uint16 full scale
TRAIN_YEARS = (2010, 2015)  # inclusive
VAL_YEARS = (2017, 2018)  # inclusive
SEQUENCES_PER_SHARD = 64  # 64 × 96 KiB raw per shard and channel
HOUR_NS = 3_600_000_000_000

# short name -> (WeatherBench folder, netCDF variable)
VARIABLES: dict[str, tuple[str, str]] = {
    "t2m": ("2m_temperature", "t2m"),
    "t": ("temperature_850", "t"),
    "z": ("geopotential_500", "z"),
    "r": ("relative_humidity", "r"),
    "u": ("u_component_of_wind", "u"),
    "v": ("v_component_of_wind", "v"),
    "u10": ("10m_u_component_of_wind", "u10"),
    "v10": ("10m_v_component_of_wind", "v10"),
    "tcc": ("total_cloud_cover", "tcc"),
    "tp": ("total_precipitation", "tp"),
}

_UNIT_NS = {"day": 86_400 * 10**9, "hour": HOUR_NS, "minute": 60 * 10**9, "second": 10**9}
_SINCE = re.compile(r"^\s*(day|hour|minute|second)s?\s+since\s+(\d{1,4}-\d{1,2}-\d{1,2})(?:[ T](\d{1,2}:\d{2}(?::\d{2})?))?")


def parse_years(text: str) -> tuple[int, int]:
    """"2010-2015" -> (2010, 2015); "2016" -> (2016, 2016)."""
    m = re.fullmatch(r"\s*(\d{4})\s*(?:[-:]\s*(\d{4})\s*)?", text)
    if not m:
        raise ValueError(f"years must look like 2010-2015 or 2016, not {text!r}")
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    if b < a:
        raise ValueError(f"year range {text!r} ends before it starts")
    return a, b


def decode_time(path: Path, values: np.ndarray, units: str) -> np.ndarray:
    """CF time values + units -> int64 ns since 1970 (proleptic Gregorian, as numpy)."""
    m = _SINCE.match(units or "")
    if not m:
        raise ImporterInputError(f"{path}: time units {units!r} not understood (expected e.g. 'hours since 1979-01-01')")
    unit, date, clock = m.groups()
    y, mo, d = (int(p) for p in date.split("-"))
    base = np.datetime64(f"{y:04d}-{mo:02d}-{d:02d}T{clock or '00:00'}", "ns").astype(np.int64)
    ns = np.round(np.asarray(values, dtype=np.float64) * _UNIT_NS[unit]).astype(np.int64)
    return base + ns


def years_of(ns: np.ndarray) -> np.ndarray:
    return ns.astype("datetime64[ns]").astype("datetime64[Y]").astype(np.int64) + 1970


@dataclass
class FieldFile:
    """One netCDF file of one variable: its times and (lazily) its data at the chosen level."""

    path: Path
    nc_var: str
    times: np.ndarray  # (n,) int64 ns
    level: float | None  # the level used (hPa), None when the file has no level dimension
    units: str
    lat_ascending: bool

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows (indices into ``times``) -> (len(rows), 32, 64) float32, north-up, scale/offset applied."""
        import h5netcdf

        with h5netcdf.File(self.path, "r") as f:
            var = f.variables[self.nc_var]
            dims = var.dimensions
            index: list = [slice(None)] * len(dims)
            if "level" in dims:  # open_field_file checked that the level exists
                levels = np.asarray(f.variables["level"][:], dtype=np.float64)
                index[dims.index("level")] = int(np.flatnonzero(levels == self.level)[0])
            data = np.asarray(var[tuple(index)])  # (time, lat, lon) in file order of the remaining dims
            kept = [d for d in dims if d != "level"]
            data = np.transpose(data, [kept.index("time"), kept.index(_lat_name(kept)), kept.index(_lon_name(kept))])
            data = data[rows].astype(np.float64)
            attrs = var.attrs
            fill = [attrs[k] for k in ("_FillValue", "missing_value") if k in attrs]
            bad = np.zeros(data.shape, dtype=bool)
            for v in fill:
                bad |= data == np.asarray(v).astype(np.float64).ravel()[0]
            data = data * float(np.asarray(attrs.get("scale_factor", 1.0)).ravel()[0]) \
                + float(np.asarray(attrs.get("add_offset", 0.0)).ravel()[0])
            bad |= ~np.isfinite(data)
        if bad.any():
            raise ImporterInputError(f"{self.path}: {int(bad.sum())} missing/non-finite values in {self.nc_var!r}")
        if self.lat_ascending:
            data = data[:, ::-1]
        return data.astype(np.float32)


def _lat_name(dims) -> str:
    return "lat" if "lat" in dims else "latitude"


def _lon_name(dims) -> str:
    return "lon" if "lon" in dims else "longitude"


def open_field_file(path: Path, nc_var: str, level: float | None) -> tuple[FieldFile, np.ndarray, np.ndarray]:
    """Validate one file (variable, dims, grid, level, time) -> (FieldFile, lat north-up, lon)."""
    import h5netcdf

    try:
        f = h5netcdf.File(path, "r")
    except Exception as e:  # h5py raises OSError for non-HDF5 files, others for broken ones
        raise ImporterInputError(f"{path}: not a readable netCDF4/HDF5 file ({e.__class__.__name__}: {e})") from None
    with f:
        if nc_var not in f.variables:
            have = ", ".join(sorted(k for k in f.variables if k not in f.dimensions)) or "none"
            raise ImporterInputError(f"{path}: variable {nc_var!r} not found (data variables: {have})")
        var = f.variables[nc_var]
        dims = var.dimensions
        lat_name, lon_name = _lat_name(dims), _lon_name(dims)
        extra = [d for d in dims if d not in ("time", "level", lat_name, lon_name)]
        if "time" not in dims or lat_name not in dims or lon_name not in dims or extra:
            raise ImporterInputError(f"{path}: {nc_var!r} has dims {dims}, expected (time, [level,] lat, lon)")
        nlat, nlon = var.shape[dims.index(lat_name)], var.shape[dims.index(lon_name)]
        if (nlat, nlon) != GRID:
            raise ImporterInputError(f"{path}: grid is {nlat}×{nlon} (lat×lon), expected {GRID[0]}×{GRID[1]} "
                                     "(WeatherBench 5.625°)")
        used_level = None
        if "level" in dims:
            if "level" not in f.variables:
                raise ImporterInputError(f"{path}: {nc_var!r} has a level dimension but no 'level' coordinate")
            levels = np.asarray(f.variables["level"][:], dtype=np.float64)
            if level is None:
                used_level = float(levels[-1])  # OpenSTL's choice: the last level in the file
            elif level in levels:
                used_level = float(level)
            else:
                raise ImporterInputError(f"{path}: level {level:g} hPa not in the file's levels "
                                         f"{[float(x) for x in levels]}")
        elif "level" in f.variables and np.asarray(f.variables["level"][()]).size == 1:
            used_level = float(np.asarray(f.variables["level"][()]).ravel()[0])  # e.g. temperature_850
            if level is not None and level != used_level:  # (it was ignored: the provenance said 500, the data 850)
                raise ImporterInputError(f"{path}: {nc_var!r} is at one level only, {used_level:g} hPa, not the "
                                         f"--level {level:g} asked for")
        if "time" not in f.variables:
            raise ImporterInputError(f"{path}: no 'time' coordinate variable")
        tvar = f.variables["time"]
        times = decode_time(path, tvar[:], str(tvar.attrs.get("units", "")))
        if len(times) == 0:
            raise ImporterInputError(f"{path}: no time steps")
        lat = np.asarray(f.variables[lat_name][:], dtype=np.float64) if lat_name in f.variables else np.arange(nlat, dtype=np.float64)
        lon = np.asarray(f.variables[lon_name][:], dtype=np.float64) if lon_name in f.variables else np.arange(nlon, dtype=np.float64)
        ascending = bool(lat[-1] > lat[0])
        units = str(var.attrs.get("units", ""))
    return FieldFile(path, nc_var, times, used_level, units, ascending), (lat[::-1] if ascending else lat), lon


@dataclass
class Field:
    """One variable across its yearly files, restricted to the requested years."""

    name: str
    folder: Path
    nc_var: str
    files: list[tuple[FieldFile, np.ndarray]]  # (file, rows inside the requested years)
    times: np.ndarray  # (n,) int64 ns, sorted, all files
    level: float | None
    units: str
    lat: np.ndarray
    lon: np.ndarray


def scan_field(root: Path, name: str, years: set[int], level: float | None) -> Field:
    """Find and validate the files of variable ``name`` under ``root``; keep the rows of ``years``."""
    if name not in VARIABLES:
        raise ImporterInputError(f"unknown WeatherBench variable {name!r} (known: {', '.join(VARIABLES)})")
    folder_name, nc_var = VARIABLES[name]
    folder = root / folder_name
    if not folder.is_dir():
        raise ImporterInputError(f"{folder}: no such folder (WeatherBench layout: ROOT/{folder_name}/"
                                 f"{folder_name}_YYYY_5.625deg.nc)")
    paths = sorted(folder.glob("*.nc"))
    if not paths:
        raise ImporterInputError(f"{folder}: empty folder (no *.nc files)")
    files, all_times, ref = [], [], None
    for path in paths:
        ff, lat, lon = open_field_file(path, nc_var, level)
        if ref is None:
            ref = (ff, lat, lon)
        elif not (np.allclose(lat, ref[1]) and np.allclose(lon, ref[2])):
            raise ImporterInputError(f"{path}: lat/lon coordinates differ from {ref[0].path.name}")
        elif ff.level != ref[0].level:
            raise ImporterInputError(f"{path}: level {ff.level} differs from {ref[0].path.name} ({ref[0].level})")
        rows = np.flatnonzero(np.isin(years_of(ff.times), list(years)))
        all_times.append(ff.times[rows])
        if len(rows):
            files.append((ff, rows))
    times = np.concatenate(all_times)
    if len(np.unique(times)) != len(times):
        raise ImporterInputError(f"{folder}: the same time step appears more than once across files")
    order = np.argsort(times)
    return Field(name, folder, nc_var, files, times[order], ref[0].level, ref[0].units, ref[1], ref[2])


def window_starts(hours_present: np.ndarray, years: tuple[int, int], step: int, stride: int) -> tuple[np.ndarray, int]:
    """Start times (ns) of complete FRAMES-long windows inside ``years``; also how many windows of those years
    were skipped because a frame is missing: within the files, and where the files do not reach (a year cut
    short, a file missing at either end of the range). The windows lie on a ``stride``-hour grid over the whole
    of ``years``, in phase with the first hour present."""
    lo = np.datetime64(f"{years[0]:04d}-01-01T00:00", "ns").astype(np.int64)
    hi = np.datetime64(f"{years[1] + 1:04d}-01-01T00:00", "ns").astype(np.int64)  # exclusive
    inside = hours_present[(hours_present >= lo) & (hours_present < hi)]
    if len(inside) == 0:
        return np.zeros(0, np.int64), 0
    span, stride_ns = (FRAMES - 1) * step * HOUR_NS, stride * HOUR_NS
    first = lo + (int(inside[0]) - lo) % stride_ns
    n = (hi - 1 - first - span) // stride_ns + 1  # integer maths: ns overflow float64
    starts = first + np.arange(max(n, 0), dtype=np.int64) * stride_ns
    offsets = np.arange(FRAMES, dtype=np.int64) * step * HOUR_NS
    wanted = starts[:, None] + offsets[None, :]
    ok = np.isin(wanted, inside).all(axis=1)
    return starts[ok], int((~ok).sum())


def _year_list(years: list[int]) -> str:
    """[2010, 2011, 2012, 2015] -> "2010–2012, 2015"."""
    parts, i = [], 0
    while i < len(years):
        j = i
        while j + 1 < len(years) and years[j + 1] == years[j] + 1:
            j += 1
        parts.append(str(years[i]) if i == j else f"{years[i]}–{years[j]}")
        i = j + 1
    return ", ".join(parts)


def import_weatherbench(
    root: str | Path,
    out: str | Path,
    *,
    variables: list[str] | tuple[str, ...],
    train_years: tuple[int, int] = TRAIN_YEARS,
    val_years: tuple[int, int] = VAL_YEARS,
    level: float | None = None,
    step: int = 1,
    stride: int = 24,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Convert WeatherBench files under ``root`` into a dataset at ``out`` (one channel per variable)."""
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise ImporterInputError(f"{root}: no such folder")
    if not variables:
        raise ValueError("choose at least one variable")
    if len(set(variables)) != len(variables):
        raise ValueError(f"variables repeated: {list(variables)}")
    if step < 1 or stride < 1:
        raise ValueError("step and stride must be at least 1 hour")
    if not (train_years[1] < val_years[0] or val_years[1] < train_years[0]):
        raise ValueError(f"train years {train_years} and val years {val_years} overlap")
    years = set(range(train_years[0], train_years[1] + 1)) | set(range(val_years[0], val_years[1] + 1))

    # pass 1: validate every file, align times, compute the normalisation (nothing is written yet)
    fields = [scan_field(root, name, years, level) for name in variables]
    times = fields[0].times
    for fl in fields[1:]:
        if not np.array_equal(fl.times, times):
            raise ImporterInputError(f"{fl.folder}: time steps differ from {fields[0].folder} in the selected years "
                                     f"({len(fl.times)} vs {len(times)})")
        if not (np.allclose(fl.lat, fields[0].lat) and np.allclose(fl.lon, fields[0].lon)):
            raise ImporterInputError(f"{fl.folder}: lat/lon coordinates differ from {fields[0].folder}")
    present = set(years_of(times).tolist())
    for label, yrs in (("train", train_years), ("val", val_years)):
        absent = [y for y in range(yrs[0], yrs[1] + 1) if y not in present]
        if absent:  # a partial download would make a dataset that claims years it does not hold
            raise ImporterInputError(f"{', '.join(str(f.folder) for f in fields)}: no data for {label} year"
                                     f"{'s' if len(absent) > 1 else ''} {_year_list(absent)} (--{label}-years "
                                     f"{yrs[0]}{'' if yrs[0] == yrs[1] else f'–{yrs[1]}'}); add their files or narrow --{label}-years")
    train_starts, train_skipped = window_starts(times, train_years, step, stride)
    val_starts, val_skipped = window_starts(times, val_years, step, stride)
    for label, starts, yrs in (("train", train_starts, train_years), ("val", val_starts, val_years)):
        if len(starts) == 0:
            raise ImporterInputError(f"{root}: no complete {FRAMES}-frame window ({step} h apart) in the {label} "
                                     f"years {yrs[0]}–{yrs[1]} of {', '.join(str(f.folder.name) for f in fields)}")

    bar = tqdm(total=2 * sum(len(f.files) for f in fields), desc="weatherbench: statistics, then data", unit="file read",
               file=sys.stderr, disable=not progress)
    stats = []
    for fl in fields:
        n, mean_acc, m2, lo, hi = 0, 0.0, 0.0, np.inf, -np.inf
        for ff, rows in fl.files:
            data = ff.read(rows).astype(np.float64)
            lo, hi = min(lo, float(data.min())), max(hi, float(data.max()))
            is_train = np.isin(years_of(ff.times[rows]), list(range(train_years[0], train_years[1] + 1)))
            x = data[is_train]
            if x.size:  # Chan et al. parallel mean/variance update: stable for K-scale temperatures
                k, mu = x.size, float(x.mean())
                delta = mu - mean_acc
                mean_acc += delta * k / (n + k)
                m2 += float(((x - mu) ** 2).sum()) + delta ** 2 * n * k / (n + k)
                n += k
            bar.update()
        if n == 0:
            raise ImporterInputError(f"{fl.folder}: no data in the train years {train_years[0]}–{train_years[1]}")
        std = float(np.sqrt(m2 / n)) or 1.0  # a constant field still round-trips
        z_min, z_max = (lo - mean_acc) / std, (hi - mean_acc) / std
        if z_max <= z_min:
            z_max = z_min + 1.0
        stats.append(dict(mean=mean_acc, std=std, z_min=z_min, z_max=z_max))

    # pass 2: quantise every selected hour to uint16, channels stacked: (n_times, C, 32, 64)
    series = np.empty((len(times), len(fields)) + GRID, dtype=np.uint16)
    for c, (fl, st) in enumerate(zip(fields, stats)):
        for ff, rows in fl.files:
            z = (ff.read(rows).astype(np.float64) - st["mean"]) / st["std"]
            q = np.clip(np.rint((z - st["z_min"]) / (st["z_max"] - st["z_min"]) * MAX_Q), 0, MAX_Q).astype(np.uint16)
            series[np.searchsorted(times, ff.times[rows]), c] = q
            bar.update()
    bar.close()

    starts = np.concatenate([train_starts, val_starts])
    splits = np.concatenate([np.full(len(train_starts), SPLIT_TRAIN, np.uint8), np.full(len(val_starts), SPLIT_VAL, np.uint8)])
    offsets = np.arange(FRAMES, dtype=np.int64) * step * HOUR_NS

    def make_shard(rng: range) -> dict:
        ts = starts[rng.start:rng.stop, None] + offsets[None, :]  # (k, T) ns
        rows = np.searchsorted(times, ts)  # every frame of a window exists (window_starts checked)
        k = len(rng)
        return dict(frames=series[rows], split=splits[rng.start:rng.stop], run_index=np.zeros(k, np.int32),
                    timestamp_ns=ts, qc_flags=np.zeros((k, FRAMES), np.uint8),
                    qc_scores=np.zeros((k, FRAMES, 0), np.float32))

    var_meta = []
    for fl, st in zip(fields, stats):
        zr = st["z_max"] - st["z_min"]
        var_meta.append(dict(
            name=fl.name, folder=fl.folder.name, nc_var=fl.nc_var, level_hpa=fl.level, units=fl.units,
            mean=st["mean"], std=st["std"], z_min=st["z_min"], z_max=st["z_max"],
            scale=zr * st["std"] / MAX_Q, offset=st["mean"] + st["z_min"] * st["std"],
            mse_scale_standardised=zr ** 2))
    config = dict(root=str(root), variables=list(variables), train_years=list(train_years),
                  val_years=list(val_years), level=level, step_hours=step, stride_hours=stride)
    extra = dict(
        benchmark="weatherbench", resolution_deg=5.625, variables=var_meta,
        normalisation="z = (x - mean) / std over the train years; q = round((z - z_min) / (z_max - z_min) * 65535); "
                      "x = q * scale + offset",
        train_years=list(train_years), val_years=list(val_years), step_hours=step, stride_hours=stride,
        skipped_windows={"train": train_skipped, "val": val_skipped},
        lat=[float(v) for v in fields[0].lat], lon=[float(v) for v in fields[0].lon])
    return write_sequences(
        out, make_shard, n_sequences=len(starts), overwrite=overwrite, desc="weatherbench write",
        progress=progress, frames_per_sequence=FRAMES, channels=len(fields), height=GRID[0], width=GRID[1],
        dtype=np.uint16, sequences_per_shard=SEQUENCES_PER_SHARD, in_frames=IN_FRAMES, out_frames=OUT_FRAMES,
        pixel_format="Mono16", max_value=MAX_Q, runs=["weatherbench-5.625deg"],
        provenance=dict(command=command or " ".join(sys.argv), source_runs=[str(f.folder) for f in fields],
                        config=config),
        extra=extra)


def to_physical(q: np.ndarray, variable: dict) -> np.ndarray:
    """Stored uint16 values of one channel -> physical units, using its ``extra["variables"][c]`` entry."""
    return np.asarray(q, dtype=np.float64) * variable["scale"] + variable["offset"]

"""WeatherBench importer on tiny netCDF files written here in the real WeatherBench layout."""

from __future__ import annotations

from pathlib import Path

import h5netcdf
import numpy as np
import pytest
from click.testing import CliRunner

from chdl.cli import main
from chdl.dataset import SPLIT_TRAIN, SPLIT_VAL, open_dataset
from chdl.torch_dataset import SequenceDataset
from curation.importers.common import ImporterInputError
from curation.importers.weatherbench import import_weatherbench, parse_years, to_physical

LAT = np.linspace(-87.1875, 87.1875, 32)  # WeatherBench: ascending, south first
LON = np.arange(64) * 5.625
HOURS = 72  # per yearly file: Jan 1 00:00 .. Jan 3 23:00 -> 3 non-overlapping 24 h windows
LEVELS = np.array([500, 850, 1000], np.int32)
H1979 = np.datetime64("1979-01-01T00", "h")


def field(var: str, year: int, hours: np.ndarray, level: float | None = None) -> np.ndarray:
    """A smooth, time-varying field (time, lat, lon) whose value encodes var, year, level and hour."""
    base = {"t2m": 270.0, "r": 60.0, "tcc": 0.5}[var] + (level or 0) / 100.0
    amp = {"t2m": 20.0, "r": 30.0, "tcc": 0.4}[var]
    h = hours.astype(np.float64)[:, None, None]
    lat = np.deg2rad(LAT)[None, :, None]
    lon = np.deg2rad(LON)[None, None, :]
    return (base + amp * np.cos(lat) * np.sin(lon + h / 7.0) + 0.01 * (year - 2000) + 0.001 * h).astype(np.float32)


def hours_of(year: int, n: int = HOURS) -> np.ndarray:
    start = (np.datetime64(f"{year}-01-01T00", "h") - H1979).astype(np.int64)
    return start + np.arange(n, dtype=np.int64)


def write_file(root: Path, folder: str, var: str, year: int, *, levels: np.ndarray | None = None,
               grid=(32, 64), drop: slice | None = None, nc_var: str | None = None, packed: bool = False) -> Path:
    """One WeatherBench yearly file: ROOT/<folder>/<folder>_<year>_5.625deg.nc."""
    hours = hours_of(year)
    if drop is not None:
        hours = np.delete(hours, np.arange(len(hours))[drop])
    path = root / folder / f"{folder}_{year}_5.625deg.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5netcdf.File(path, "w") as f:
        dims = {"time": len(hours), "lat": grid[0], "lon": grid[1]}
        if levels is not None:
            dims["level"] = len(levels)
        f.dimensions = dims
        t = f.create_variable("time", ("time",), "i8")
        t[:] = hours
        t.attrs["units"] = "hours since 1979-01-01"
        t.attrs["calendar"] = "proleptic_gregorian"
        f.create_variable("lat", ("lat",), "f8")[:] = np.linspace(-87.1875, 87.1875, grid[0])
        f.create_variable("lon", ("lon",), "f8")[:] = np.arange(grid[1]) * 360.0 / grid[1]
        if packed:  # int16 + scale_factor/add_offset, as ERA5 comes from the CDS
            x = field(var, year, hours).astype(np.float64)
            offset = float(np.round(x.mean(), 2))
            data = np.round((x - offset) / 1e-4).astype(np.int16)
            v = f.create_variable(nc_var or var, ("time", "lat", "lon"), "i2")
            v.attrs["scale_factor"], v.attrs["add_offset"] = 1e-4, offset
        elif levels is None:
            data = field(var, year, hours) if grid == (32, 64) else np.zeros((len(hours),) + grid, np.float32)
            v = f.create_variable(nc_var or var, ("time", "lat", "lon"), "f4")
        else:
            f.create_variable("level", ("level",), "i4")[:] = levels
            data = np.stack([field(var, year, hours, lv) for lv in levels], axis=1)
            v = f.create_variable(nc_var or var, ("time", "level", "lat", "lon"), "f4")
        v[:] = data
        v.attrs["units"] = {"t2m": "K", "r": "%", "tcc": "(0 - 1)"}[var]
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """t2m, r (3 levels) and tcc for 2000, 2001 (train), 2002 (neither), 2003 (val)."""
    r = tmp_path / "weatherbench"
    for year in (2000, 2001, 2002, 2003):
        write_file(r, "2m_temperature", "t2m", year)
        write_file(r, "relative_humidity", "r", year, levels=LEVELS)
        write_file(r, "total_cloud_cover", "tcc", year)
    return r


def truth(var: str, years, level=None) -> np.ndarray:
    return np.concatenate([field(var, y, hours_of(y), level) for y in years]).astype(np.float64)


def test_two_variables_normalised_quantised_and_round_trip(root: Path, tmp_path: Path):
    out = import_weatherbench(root, tmp_path / "wb.zarr", variables=["t2m", "r"], train_years=(2000, 2001),
                              val_years=(2003, 2003), level=850, progress=False)
    ds = open_dataset(out)
    assert ds.frames.shape == (9, 24, 2, 32, 64) and ds.frames.dtype == np.uint16
    assert list(ds.split) == [SPLIT_TRAIN] * 6 + [SPLIT_VAL] * 3
    assert ds.attrs["in_frames"] == 12 and ds.attrs["out_frames"] == 12 and ds.attrs["max_value"] == 65535
    meta = ds.attrs["extra"]["variables"]
    assert [m["name"] for m in meta] == ["t2m", "r"] and meta[1]["level_hpa"] == 850 and meta[0]["units"] == "K"
    for c, (var, level) in enumerate((("t2m", None), ("r", 850))):
        train = truth(var, (2000, 2001), level)
        # normalisation: mean/std over the train years only (2002 is not imported, 2003 is val)
        assert meta[c]["mean"] == pytest.approx(train.mean(), rel=1e-9)
        assert meta[c]["std"] == pytest.approx(train.std(), rel=1e-6)
        # the full uint16 range is used, and decoding gives the source back within half a step
        q = ds.frames[:, :, c]
        assert q.min() == 0 and q.max() == 65535
        expect = np.concatenate([truth(var, (2000, 2001), level), truth(var, (2003,), level)])
        expect = expect.reshape(9, 24, 32, 64)[:, :, ::-1]  # stored north-up
        err = np.abs(to_physical(q, meta[c]) - expect).max()
        assert err <= meta[c]["scale"] * 0.5 + 1e-4 * abs(meta[c]["offset"]) * 1e-3
        z = (expect - meta[c]["mean"]) / meta[c]["std"]
        assert meta[c]["z_min"] == pytest.approx(z.min(), abs=1e-4) and meta[c]["z_max"] == pytest.approx(z.max(), abs=1e-4)
    # real timestamps, hourly and consecutive; windows start at midnight
    ts = ds.group["timestamp_ns"][:]
    assert (np.diff(ts, axis=1) == 3600 * 10**9).all()
    assert ts[0, 0] == np.datetime64("2000-01-01T00", "ns").astype(np.int64)
    assert ts[6, 0] == np.datetime64("2003-01-01T00", "ns").astype(np.int64)
    assert ds.attrs["extra"]["lat"][0] > ds.attrs["extra"]["lat"][-1]
    x, y = SequenceDataset(out, split="val")[0]
    assert x.shape == (12, 2, 32, 64) and y.shape == (12, 2, 32, 64) and float(x.max()) <= 1.0


def test_default_level_is_the_files_last(root: Path, tmp_path: Path):
    out = import_weatherbench(root, tmp_path / "r.zarr", variables=["r"], train_years=(2000, 2001),
                              val_years=(2003, 2003), progress=False)
    assert open_dataset(out).attrs["extra"]["variables"][0]["level_hpa"] == 1000


def test_packed_int16_files_are_unpacked(tmp_path: Path):
    r = tmp_path / "wb"
    for year in (2000, 2001):
        write_file(r, "total_cloud_cover", "tcc", year, packed=True)
    out = import_weatherbench(r, tmp_path / "t.zarr", variables=["tcc"], train_years=(2000, 2000),
                              val_years=(2001, 2001), progress=False)
    ds = open_dataset(out)
    meta = ds.attrs["extra"]["variables"][0]
    expect = np.concatenate([truth("tcc", (2000,)), truth("tcc", (2001,))]).reshape(6, 24, 32, 64)[:, :, ::-1]
    assert np.abs(to_physical(ds.frames[:, :, 0], meta) - expect).max() < 1e-4 + meta["scale"]


def test_windows_across_a_gap_are_skipped(tmp_path: Path):
    r = tmp_path / "wb"
    write_file(r, "total_cloud_cover", "tcc", 2000, drop=slice(30, 31))  # hour 30 missing: day 2 is broken
    write_file(r, "total_cloud_cover", "tcc", 2001)
    out = import_weatherbench(r, tmp_path / "t.zarr", variables=["tcc"], train_years=(2000, 2000),
                              val_years=(2001, 2001), progress=False)
    ds = open_dataset(out)
    assert list(ds.split) == [SPLIT_TRAIN] * 2 + [SPLIT_VAL] * 3
    # the broken day, and every day of the years the 72-hour files do not reach (2000 has 366 days, 2001 365)
    assert ds.attrs["extra"]["skipped_windows"] == {"train": 1 + 363, "val": 362}
    assert (np.diff(ds.group["timestamp_ns"][:], axis=1) == 3600 * 10**9).all()


def test_years_without_data_are_refused_and_files_cut_short_are_warned_about(tmp_path: Path):
    """Requested years with no file were dropped without a word (--train-years 2010-2015 on a download of
    2014-2016 wrote a dataset that claimed 2010-2015); a year whose file ends early lost its windows uncounted."""
    r = tmp_path / "wb"
    for year in (2001, 2003, 2004):
        write_file(r, "total_cloud_cover", "tcc", year)
    out = tmp_path / "t.zarr"
    res = CliRunner().invoke(main, ["import", "weatherbench", str(r), "--var", "tcc", "--out", str(out),
                                    "--train-years", "1999-2003", "--val-years", "2004"])
    assert res.exit_code == 1 and not out.exists()
    assert res.output.splitlines() == [
        f"Error: {r / 'total_cloud_cover'}: no data for train years 1999–2000, 2002 (--train-years 1999–2003); "
        "add their files or narrow --train-years"]
    # every year present, one cut short after 40 hours: its third day is skipped and counted, with a warning
    write_file(r, "total_cloud_cover", "tcc", 2002, drop=slice(40, None))
    res = CliRunner().invoke(main, ["import", "weatherbench", str(r), "--var", "tcc", "--out", str(out),
                                    "--train-years", "2001-2003", "--val-years", "2004", "-q"])
    assert res.exit_code == 0, res.output
    skipped = open_dataset(out).attrs["extra"]["skipped_windows"]
    assert skipped == {"train": (365 - 3) + (365 - 1) + (365 - 3), "val": 366 - 3}
    assert f"warning: {skipped['train']} train and {skipped['val']} val windows of the chosen years were skipped" \
        in res.output
    assert open_dataset(out).frames.shape[0] == 3 + 1 + 3 + 3


def test_cli_end_to_end_with_preview_and_overwrite(root: Path, tmp_path: Path):
    out, png = tmp_path / "tcc.zarr", tmp_path / "tcc.png"
    args = ["import", "weatherbench", str(root), "--var", "tcc", "--out", str(out), "--train-years", "2000-2001",
            "--val-years", "2003", "--stride", "12"]
    runner = CliRunner()
    r = runner.invoke(main, args + ["--preview", str(png)])
    assert r.exit_code == 0, r.output
    ds = open_dataset(out)
    assert ds.frames.shape == (5 * 2 + 5, 24, 1, 32, 64)  # stride 12 h: 5 windows in each 72 h file
    assert "chdl import weatherbench" in ds.attrs["provenance"]["command"]
    assert png.stat().st_size > 0
    r = runner.invoke(main, args)
    assert r.exit_code == 1 and "already exists" in r.output
    r = runner.invoke(main, args[:-2] + ["--stride", "24", "--overwrite"])
    assert r.exit_code == 0 and open_dataset(out).frames.shape[0] == 9


@pytest.mark.parametrize("case, expect", [
    ("missing_variable", "variable 'tcc' not found"),
    ("wrong_grid", "grid is 16×32"),
    ("empty_folder", "empty folder"),
    ("no_folder", "no such folder"),
    ("no_val_years", "no data for val year 2005 (--val-years 2005)"),
    ("no_val_window", "no complete 24-frame window"),
])
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path: Path, case: str, expect: str):
    r = tmp_path / "wb"
    write_file(r, "total_cloud_cover", "tcc", 2000)
    bad = r / "total_cloud_cover"
    if case == "missing_variable":
        bad = write_file(r, "total_cloud_cover", "tcc", 2001, nc_var="cloud")
    elif case == "wrong_grid":
        bad = write_file(r, "total_cloud_cover", "tcc", 2001, grid=(16, 32))
    elif case == "empty_folder":
        for p in bad.glob("*.nc"):
            p.unlink()
    elif case == "no_folder":
        for p in bad.glob("*.nc"):
            p.unlink()
        bad.rmdir()
    elif case == "no_val_window":
        write_file(r, "total_cloud_cover", "tcc", 2001, drop=slice(10, None))
    else:
        write_file(r, "total_cloud_cover", "tcc", 2001)
    out = tmp_path / "x.zarr"
    years = ["--train-years", "2000", "--val-years", "2001" if case != "no_val_years" else "2005"]
    res = CliRunner().invoke(main, ["import", "weatherbench", str(r), "--var", "tcc", "--out", str(out), *years])
    assert res.exit_code == 1
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and expect in line and str(bad if case != "no_val_window" else r) in line
    assert not out.exists()


def test_parse_years_and_unknown_variable(tmp_path: Path):
    assert parse_years("2010-2015") == (2010, 2015) and parse_years("2016") == (2016, 2016)
    with pytest.raises(ValueError):
        parse_years("2015-2010")
    tmp_path.joinpath("wb").mkdir()
    with pytest.raises(ImporterInputError, match="unknown WeatherBench variable 'sst'"):
        import_weatherbench(tmp_path / "wb", tmp_path / "x.zarr", variables=["sst"], progress=False)


def test_a_level_other_than_a_single_level_files_own_is_refused(tmp_path: Path):
    """temperature_850 (a scalar level coordinate) with --level 500 was imported silently: the provenance said 500,
    the data was at 850 hPa."""
    r = tmp_path / "wb"
    for year in (2000, 2001):
        path = write_file(r, "total_cloud_cover", "tcc", year)
        with h5netcdf.File(path, "a") as f:
            f.create_variable("level", (), "i4")[()] = 850
    args = ["import", "weatherbench", str(r), "--var", "tcc", "--train-years", "2000", "--val-years", "2001"]
    res = CliRunner().invoke(main, args + ["--level", "500", "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 1 and res.output.strip() == (
        f"Error: {r / 'total_cloud_cover' / 'total_cloud_cover_2000_5.625deg.nc'}: 'tcc' is at one level only, 850 hPa, "
        "not the --level 500 asked for"), res.output
    assert not (tmp_path / "x.zarr").exists()
    ok = CliRunner().invoke(main, args + ["--level", "850", "--out", str(tmp_path / "y.zarr")])
    assert ok.exit_code == 0, ok.output
    assert open_dataset(tmp_path / "y.zarr").attrs["extra"]["variables"][0]["level_hpa"] == 850.0

"""The output folder of ``chdl predict`` (:func:`diffuma.prediction.write_predictions`): what may be written or
replaced. Torch-free, so the CLI checks ``--out`` before it loads anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def _is_predict_output(folder: Path) -> bool:
    """Whether ``folder`` is what :func:`write_predictions` writes (its predictions.zarr names the models)."""
    meta = folder / "predictions.zarr" / "zarr.json"
    try:
        return "models" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def check_apart_from_input(out: str | Path, source: str | Path | None, data_folders_too: bool = False) -> None:
    """ValueError (one line naming ``out``) if the output folder ``out`` is the input ``source``, lies inside it or
    holds it (results written into a dataset, or an input deleted with an output); with ``data_folders_too``
    also if ``out`` is itself a dataset or a raw recording (eval and bench write their files beside others, so a
    data folder is no place for them)."""
    out = Path(out)
    if source is not None:
        o, src = out.resolve(), Path(source).resolve()
        if o == src or src in o.parents or o in src.parents:
            where = "is" if o == src else "is inside" if src in o.parents else "holds"
            raise ValueError(f"{out}: {where} the input {source}; choose another --out")
    if data_folders_too and (out / "zarr.json").is_file():
        raise ValueError(f"{out}: a dataset (it holds zarr.json), not an output folder; choose another --out")
    if data_folders_too and (out / "manifest.json").is_file() and (out / "frames.jsonl").is_file():
        raise ValueError(f"{out}: a raw recording (it holds manifest.json and frames.jsonl), not an output folder; "
                         "choose another --out")


def check_output_folder(out: str | Path, source: str | Path | None = None, overwrite: bool = False) -> None:
    """Refuse an output folder :func:`write_predictions` must not write (FileExistsError / ValueError, one line
    naming it): the input ``source`` itself, a folder inside it or holding it; an existing non-empty folder
    without ``overwrite``; with ``overwrite``, anything but an earlier predict output -- a dataset, a
    recording or any other folder is never deleted (as ``chdl curate`` never deletes a non-dataset)."""
    out = Path(out)
    check_apart_from_input(out, source)
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is a file, not an output folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (use --overwrite)")
    if not _is_predict_output(out):
        raise FileExistsError(f"{out}: exists and is not a chdl predict output (no predictions.zarr of one); "
                              "refusing to delete it even with --overwrite")


def remove_stale_working_folders(out: Path) -> None:
    """Delete the temporary folders (``.<name>.tmp<pid>``) that earlier runs into ``out`` left when they were
    killed: those whose process is gone."""
    for tmp in out.parent.glob(f".{out.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)

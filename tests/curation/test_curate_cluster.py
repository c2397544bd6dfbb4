"""`chdl curate --scheduler` on a real Dask LocalCluster of 2 worker processes (loopback only): the same
bytes as `--workers 2`, a worker killed mid-run loses nothing, resume across schedulers, and OUT as an
s3:// URL on a moto S3 server on 127.0.0.1."""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest
from click.testing import CliRunner

import curation.pipeline as pipeline
from chdl.cli import main
from chdl.dataset import DatasetFormatError, DatasetIncompleteError, DatasetWriter, open_dataset
from curation.config import CurateConfig
from curation_helpers import write_run

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this file

FAULTS = {(0, 4): ("blur", 2.0), (1, 0): ("gain", 0.75), (2, 6): ("jitter", 5.0)}
N_SHARDS = 5  # 9 sequences, 2 per shard
SHARD_TASK = pipeline._shard_task  # the real one (tests replace pipeline's)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_run(root / "run-a", lanes=6, faults=FAULTS, seed=1)
    write_run(root / "run-b", lanes=3, seed=2)
    (root.parent / "c.yaml").write_text("sequences_per_shard: 2\n")
    return root


def _args(raw, *extra, quiet=True):
    return ["curate", str(raw), "d.zarr", "--config", str(raw.parent / "c.yaml"), *extra] + (["--quiet"] if quiet else [])


def _run(raw, cwd, *extra):
    """`chdl curate RAW d.zarr ...` in a subprocess in the folder ``cwd`` (relative OUT: the recorded command
    is the same everywhere). A fresh process: --workers forks, and a fork of this process, whose OpenCV
    thread pool has run (write_run), can hang in cv2.setNumThreads."""
    cwd.mkdir(exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "chdl", *_args(raw, *extra, quiet=False)], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def _cli(raw, cwd, *extra, ok=True):
    """The same in this process, where a test can replace the shard task (it is pickled to the workers)."""
    cwd.mkdir(exist_ok=True)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        r = CliRunner().invoke(main, _args(raw, *extra))
    finally:
        os.chdir(old)
    if ok:
        assert r.exit_code == 0, r.output + repr(r.exception)
    return r


@pytest.fixture(scope="module")
def ref(raw, tmp_path_factory):
    """The one-machine result: `--workers 2`."""
    cwd = tmp_path_factory.mktemp("ref")
    _run(raw, cwd, "--workers", "2")
    return cwd


def _tree(root) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def _without(meta: bytes, *provenance_keys) -> dict:
    doc = json.loads(meta)
    for k in provenance_keys:
        doc["attributes"]["provenance"].pop(k, None)
    if provenance_keys:  # (and the provenance's digest, which covers them; every other attribute's is compared)
        doc["attributes"]["attributes_blake3"].pop("provenance")
    return doc


def assert_same_bytes(a: dict[str, bytes], b: dict[str, bytes], ignore=("created", "cwd")):
    """Every file of two datasets byte for byte; in the group's zarr.json, all but provenance ``ignore`` (when and
    where the command ran)."""
    assert sorted(a) == sorted(b)
    assert len(a) > 40 and any(k.startswith("originals/") for k in a)
    for k in a:
        if k == "zarr.json":
            assert _without(a[k], *ignore) == _without(b[k], *ignore)
            assert a[k] != b[k] or ignore == ()  # the creation time is there, and differs
        else:
            assert a[k] == b[k], k


def assert_same_result(ref, cwd, ignore=("created", "cwd")):
    assert_same_bytes(_tree(ref / "d.zarr"), _tree(cwd / "d.zarr"), ignore)
    assert (ref / "d.qc.json").read_bytes() == (cwd / "d.qc.json").read_bytes()
    assert (ref / "d.qc.html").read_bytes() == (cwd / "d.qc.html").read_bytes()


def test_local_cluster_writes_the_bytes_of_workers_2(raw, ref, tmp_path):
    """The real CLI in a subprocess with --scheduler local:2 (its own LocalCluster), progress on stderr."""
    p = _run(raw, tmp_path, "--scheduler", "local:2")
    assert f"shards {N_SHARDS}/{N_SHARDS}" in p.stderr and "frame/s" in p.stderr  # shards done, rate (and ETA)
    assert "9 sequences" in p.stdout
    assert_same_result(ref, tmp_path)
    assert open_dataset(tmp_path / "d.zarr").originals().__len__() == 3


def _claim(marker) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _kill_worker_once(marker, task):
    """The shard task, but the first one to run SIGKILLs its own worker process (a power cut): a timer
    fires while it curates and writes, and it never reports back."""
    if _claim(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGKILL)).start()
        SHARD_TASK(task)
        time.sleep(60)
    return SHARD_TASK(task)


def _wait_idle(client):
    while any(client.processing().values()):
        time.sleep(0.05)


def test_a_killed_worker_loses_nothing(raw, ref, dask_cluster, tmp_path, monkeypatch):
    import psutil

    cluster, client = dask_cluster
    marker = tmp_path / "killed"
    monkeypatch.setattr(pipeline, "_shard_task", functools.partial(_kill_worker_once, str(marker)))
    _cli(raw, tmp_path / "out", "--scheduler", cluster.scheduler_address)
    pid = int(marker.read_text())
    assert pid != os.getpid() and not psutil.pid_exists(pid)  # a worker process was killed mid-shard ...
    assert_same_result(ref, tmp_path / "out")  # ... and its shard was done again elsewhere
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it: the cluster is whole for the next test


def _fail_from_shard(first_bad, task):
    if task[0] >= first_bad:
        raise RuntimeError(f"shard {task[0]}: interrupted")
    return SHARD_TASK(task)


def test_resume_across_schedulers(raw, ref, dask_cluster, tmp_path, monkeypatch):
    cluster, client = dask_cluster
    addr = cluster.scheduler_address
    # started on the cluster, cut off, finished by local workers
    monkeypatch.setattr(pipeline, "_shard_task", functools.partial(_fail_from_shard, N_SHARDS - 1))
    r = _cli(raw, tmp_path / "a", "--scheduler", addr, ok=False)
    assert r.exit_code != 0 and "interrupted" in repr(r.exception)
    _wait_idle(client)
    with pytest.raises(DatasetIncompleteError):
        open_dataset(tmp_path / "a" / "d.zarr")
    # which of the others ran before the failure cancelled the rest depends on the scheduler's timing
    assert DatasetWriter.open(tmp_path / "a" / "d.zarr").done_shards() <= set(range(N_SHARDS - 1))
    monkeypatch.undo()
    _run(raw, tmp_path / "a", "--workers", "2")
    assert_same_result(ref, tmp_path / "a")
    # started by local workers, cut off, finished on the cluster
    monkeypatch.setattr(pipeline, "_shard_task", functools.partial(_fail_from_shard, 3))
    r = _cli(raw, tmp_path / "b", "--workers", "1", ok=False)
    assert DatasetWriter.open(tmp_path / "b" / "d.zarr").done_shards() == {0, 1, 2}
    monkeypatch.undo()
    _run(raw, tmp_path / "b", "--scheduler", addr)
    assert_same_result(ref, tmp_path / "b")


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 (a free port) with bucket ``chdl``; the AWS settings in the
    environment, where s3fs (and so zarr's fsspec store) finds them."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("chdl")
    yield fs
    server.stop()


def test_out_as_an_s3_url_on_a_cluster(raw, ref, s3, tmp_path):
    url = "s3://chdl/lines/d.zarr"
    cmd = [sys.executable, "-m", "chdl", "curate", str(raw), url, "--config", str(raw.parent / "c.yaml"), "--quiet",
           "--scheduler", "local:2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "s3://chdl/lines/d.qc.html" in p.stdout
    objects = {k[len("chdl/lines/d.zarr/"):]: s3.cat(k) for k in s3.find("chdl/lines/d.zarr")}
    assert_same_bytes(_tree(ref / "d.zarr"), objects, ignore=("created", "cwd", "command"))
    summary = json.loads(s3.cat("chdl/lines/d.qc.json"))
    assert summary.pop("dataset") == url
    assert summary == {k: v for k, v in json.loads((ref / "d.qc.json").read_text()).items() if k != "dataset"}
    html = s3.cat("chdl/lines/d.qc.html")
    assert html.count(url.encode()) == 1  # the heading names the dataset
    assert html.replace(url.encode(), b"d.zarr") == (ref / "d.qc.html").read_bytes()
    # readable from the URL; a second run refuses to overwrite it; `chdl info` reads it too
    ds = open_dataset(url)
    np.testing.assert_array_equal(ds.frames[:], open_dataset(ref / "d.zarr").frames[:])
    r = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "already exists" in r.stderr
    info = subprocess.run([sys.executable, "-m", "chdl", "info", url], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "9" in info.stdout, info.stderr
    # the shard checksums (written by the workers, through the store) verify there, and a lost object is named
    checked = ds.verify()  # every data object but shard_done's and shard_checksums' own, and originals' metadata
    originals_meta = [k for k in objects if k.startswith("originals") and k.endswith("/zarr.json") and k.count("/") == 2]
    assert not checked.problems and checked.files == len([k for k in objects if "/c/" in k]) - 2 * N_SHARDS + \
        len(originals_meta)
    s3.rm("chdl/lines/d.zarr/frames/c/3/0/0/0/0")
    with pytest.raises(DatasetFormatError, match=r"missing shard file frames/c/3/0/0/0/0 \(shard 3\)"):
        open_dataset(url)
    # --overwrite replaces it in place (here without a cluster: one process writes the URL too)
    s3.pipe("chdl/lines/d.zarr/stale-object", b"x")
    pipeline.curate(raw, url, CurateConfig(sequences_per_shard=2), overwrite=True, progress=False, log=lambda m: None)
    again = {k[len("chdl/lines/d.zarr/"):]: s3.cat(k) for k in s3.find("chdl/lines/d.zarr")}
    assert_same_bytes(_tree(ref / "d.zarr"), again, ignore=("created", "cwd", "command"))

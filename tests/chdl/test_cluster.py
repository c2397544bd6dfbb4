"""chdl.cluster: --scheduler specs, one-line errors, the checks a cluster must pass, tasks with a per-process
context, and `chdl simulate corpus --scheduler` (a real LocalCluster on 127.0.0.1)."""

import os
import sys

import cloudpickle
import pytest
from click.testing import CliRunner

import chdl
from chdl import cluster as cl
from chdl.cli import main

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this file


def _one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    msg = r.output.strip().splitlines()[-1]
    assert msg.startswith("Error: "), r.output
    for n in needles:
        assert n in msg, msg


@pytest.mark.parametrize("spec", ["local:0", "local:two", "127.0.0.1:8786"])
def test_bad_scheduler_spec_is_a_one_line_error(spec, tmp_path):
    r = CliRunner().invoke(main, ["simulate", "corpus", str(tmp_path / "c"), "--sequences", "1", "--positions", "2",
                                  "--width", "32", "--height", "24", "--scheduler", spec])
    _one_line_error(r, spec, "local:N")
    assert not any((tmp_path / "c").iterdir())


def test_unreachable_scheduler_is_a_one_line_error(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import time

    t0 = time.monotonic()  # (refused at once: the client's own retries took its whole 20 s timeout)
    r = CliRunner().invoke(main, ["curate", str(tmp_path), str(tmp_path / "o.zarr"), "--scheduler",
                                  f"tcp://127.0.0.1:{port}"])
    _one_line_error(r, f"tcp://127.0.0.1:{port}: nothing listens there (connection refused): is the Dask scheduler "
                       "running, and at this host and port?")
    assert time.monotonic() - t0 < 10
    r = CliRunner().invoke(main, ["curate", str(tmp_path), str(tmp_path / "o.zarr"), "--scheduler",
                                  "tcp://localhost:99999"])
    _one_line_error(r, "--scheduler tcp://localhost:99999: the port must be a number from 1 to 65535")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("greeting", [b"SSH-2.0-OpenSSH_9.6\r\n", None])
def test_a_server_that_is_not_a_dask_scheduler_is_a_one_line_error(tmp_path, monkeypatch, greeting):
    """Something else listening at the address: a server that greets (it made the client read a 2.8 EiB length and
    fail with a MemoryError traceback) or one that waits for the client to speak (an HTTP server: a hang for ever)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    conns = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            if greeting:
                conn.sendall(greeting)

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(cl, "CONNECT_TIMEOUT_S", 1)
    try:
        r = CliRunner().invoke(main, ["curate", str(tmp_path), str(tmp_path / "o.zarr"), "--scheduler",
                                      f"tcp://127.0.0.1:{port}"])
    finally:
        server.close()
        for c in conns:
            c.close()
    _one_line_error(r, f"tcp://127.0.0.1:{port}: ")
    assert "Traceback" not in r.output and not (tmp_path / "o.zarr").exists()


def test_workers_and_scheduler_together_are_refused(tmp_path):
    r = CliRunner().invoke(main, ["curate", str(tmp_path), str(tmp_path / "o.zarr"), "--workers", "2",
                                  "--scheduler", "local:2"])
    assert r.exit_code == 2 and "--workers" in r.output


def _context_and_pid(task):
    return task, _SEEN["ctx"], os.getpid()


_SEEN = {}


def _install(ctx):
    _SEEN["ctx"] = ctx
    _SEEN["installs"] = _SEEN.get("installs", 0) + 1


def _installs(_):
    return os.getpid(), _SEEN.get("installs", 0)


def test_map_unordered_installs_the_context_once_per_process_and_call(dask_cluster):
    _, client = dask_cluster
    c = cl.Cluster(client, "test")
    assert c.n_workers == 2 and c.address.startswith("tcp://127.0.0.1:")
    out = list(c.map_unordered(_context_and_pid, list(range(12)), _install, {"k": 1}))
    assert sorted(t for t, _, _ in out) == list(range(12)) and all(ctx == {"k": 1} for _, ctx, _ in out)
    assert os.getpid() not in {pid for _, _, pid in out}
    # a second call installs its own context once per process again
    per_process = {}
    for pid, n in c.map_unordered(_installs, list(range(8)), _install, {"k": 2}):
        per_process.setdefault(pid, set()).add(n)
    assert all(len(counts) == 1 and min(counts) >= 1 for counts in per_process.values())  # once per call
    assert {ctx["k"] for _, ctx, _ in c.map_unordered(_context_and_pid, [0, 1], _install, {"k": 3})} == {3}


def _boom(task):
    raise ValueError(f"task {task}: bad input")


def test_task_errors_reach_the_caller(dask_cluster):
    c = cl.Cluster(dask_cluster[1], "test")
    with pytest.raises(ValueError, match="bad input"):
        list(c.map_unordered(_boom, [1, 2]))


def test_checks_name_the_worker(dask_cluster, tmp_path, monkeypatch):
    c = cl.Cluster(dask_cluster[1], "tcp://x:1")
    c.check_visible([str(tmp_path)])
    with pytest.raises(cl.ClusterError, match=r"tcp://x:1: worker tcp://127\.0\.0\.1:\d+ cannot see .*nowhere"):
        c.check_visible([str(tmp_path), str(tmp_path / "nowhere")])
    c.check_versions()
    monkeypatch.setattr(chdl, "__version__", "0.0.0-other")
    with pytest.raises(cl.ClusterError, match=r"worker tcp://127\.0\.0\.1:\d+ runs chdl .* \(here 0\.0\.0-other\)"):
        c.check_versions()
    monkeypatch.undo()
    # the same version number from another tree (other code) is refused too: it passed before
    monkeypatch.setattr(cl, "code_fingerprint", lambda packages: "0123456789abcdef")
    with pytest.raises(cl.ClusterError, match=r"worker tcp://127\.0\.0\.1:\d+ runs other chdl source code \(its "
                                              r"acquisition, curation and chdl packages digest to [0-9a-f]{16}, here to "
                                              r"0123456789abcdef: the same version with other edits; start the worker "
                                              r"from the same checkout or install\)"):
        c.check_versions()


def test_every_task_checks_its_worker_versions(dask_cluster, monkeypatch):
    # a worker that joins after connect() was never checked: each task now carries the client's versions
    c = cl.Cluster(dask_cluster[1], "tcp://x:1")
    assert sorted(c.map_unordered(_context_and_pid, [0, 1], _install, {"k": 1}))[0][:2] == (0, {"k": 1})
    monkeypatch.setattr(cl, "code_fingerprint", lambda packages: "0123456789abcdef")  # (the client's, not theirs)
    with pytest.raises(cl.ClusterError, match=r"^tcp://x:1: worker tcp://127\.0\.0\.1:\d+ runs other chdl source "
                                              r"code \(.* here to 0123456789abcdef: .*\) \(it joined after the start\)"):
        list(c.map_unordered(_context_and_pid, list(range(4)), _install, {"k": 2}))


def _corpus_bytes(root):
    """Every file of a corpus, but the host timestamps (in frames.jsonl) and creation times (manifest)."""
    import json

    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            data = open(p, "rb").read()
            if f == "frames.jsonl":
                recs = [json.loads(line) for line in data.splitlines()]
                data = [{k: v for k, v in r.items() if not k.startswith("host_")} for r in recs]
            elif f == "manifest.json":
                data = {k: v for k, v in json.loads(data).items() if k not in ("created", "finished", "writer")}
            out[os.path.relpath(p, root)] = data
    return out


def test_simulate_corpus_on_a_cluster_equals_local_workers(dask_cluster, tmp_path):
    import shutil

    args = ["simulate", "corpus", "--sequences", "5", "--positions", "4", "--lanes-per-run", "2",
            "--width", "96", "--height", "72", "--fault-rate", "0.3"]
    for name in ("local", "dask"):
        r = CliRunner().invoke(main, [*args, str(tmp_path / name), "--workers", "1"])
        assert r.exit_code == 0, r.output
    # resume on the cluster: run 0 finished (kept), run 1 half-written (redone), run 2 never started
    shutil.rmtree(tmp_path / "dask" / "run_00002")
    (tmp_path / "dask" / "run_00001" / "truth" / "labels.jsonl").unlink()
    r = CliRunner().invoke(main, [*args, str(tmp_path / "dask"), "--scheduler", dask_cluster[0].scheduler_address])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "wrote 2 recordings" in r.output and "1 finished run kept" in r.output
    a, b = _corpus_bytes(tmp_path / "local"), _corpus_bytes(tmp_path / "dask")
    assert sorted(a) == sorted(b) and len(a) > 20
    for k in a:
        assert a[k] == b[k], k


def test_local_cluster_listens_on_loopback_only(dask_cluster):
    import psutil

    cluster, client = dask_cluster
    assert cluster.dashboard_link is None or "127.0.0.1" in cluster.dashboard_link
    pids = [os.getpid(), *client.run(os.getpid).values()]  # scheduler and nannies here, the workers
    listening = [c.laddr for pid in pids for c in psutil.Process(pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 5  # scheduler, its HTTP routes, 2 nannies, 2 workers
    assert {a.ip for a in listening} == {"127.0.0.1"}
    assert 8787 not in {a.port for a in listening}


def _profiling() -> bool:
    import dask

    return dask.config.get("distributed.worker.profile.enabled")


def test_local_cluster_workers_do_not_profile(dask_cluster):
    assert set(dask_cluster[1].run(_profiling).values()) == {False}


def _mask_now(_=None):
    import signal

    return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))


_AT_SETUP = []


def _record_mask_at_setup():
    _AT_SETUP.append(_mask_now())


def _setup_mask(_):
    return _AT_SETUP[0], _mask_now()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and pthread_sigmask")
def test_pool_workers_are_forked_with_the_stop_signals_held_until_their_set_up_is_done():
    """A Ctrl-C to the process group while curate forked its workers ran the parent's KeyboardInterrupt handler in
    the child's at-fork hooks ("Exception ignored in: <function _after_fork ...>" tracebacks on an interrupt that
    should print one line). The fork now happens with SIGINT/SIGTERM/SIGHUP blocked; the child lifts the block
    after its set-up (init_pool_worker's handlers), and the parent's mask is as before."""
    import multiprocessing as mp
    import signal

    before = _mask_now()
    [(at_setup, in_task)] = list(cl.pool_map_unordered(_setup_mask, [0], 1, mp.get_context("fork"),
                                                       initializer=_record_mask_at_setup))
    stops = {int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIGHUP)}
    assert stops <= set(at_setup)  # held while the worker sets itself up ...
    assert not stops & set(in_task)  # ... and let through for its tasks
    assert _mask_now() == before


def test_workers_are_named_as_their_operators_know_them():
    """Errors named a worker by address only; `dask worker --name gpu-node-3` is what its operator knows."""
    assert cl._worker_label("tcp://10.0.0.7:40123", "gpu-node-3") == "tcp://10.0.0.7:40123 (gpu-node-3)"
    assert cl._worker_label("tcp://10.0.0.7:40123", 0) == "tcp://10.0.0.7:40123"  # a LocalCluster's number
    assert cl._worker_label("tcp://10.0.0.7:40123", "tcp://10.0.0.7:40123") == "tcp://10.0.0.7:40123"


def test_a_scheduler_left_without_workers_mid_run_is_said_and_so_is_a_worker_joining(monkeypatch):
    """Every worker killed mid-curate: the bar sat at 0 % for minutes without a word (the work waits for a worker to
    join). The client's view of the scheduler, polled: no worker for NO_WORKER_GRACE_S is said once, a worker joining
    again is said, and a brief gap is not."""
    import threading

    views = iter([1, 0, 1, 0, 0, 0, 0, 2, 2])  # workers seen at each poll

    class Client:
        def scheduler_info(self):
            n = next(views, None)
            if n is None:
                done.set()
                return {"workers": {"w": {}}}
            return {"workers": {f"w{k}": {} for k in range(n)}}

    said, done = [], threading.Event()
    monkeypatch.setattr(cl, "NO_WORKER_GRACE_S", 0.025)
    cl.Cluster(Client(), "tcp://127.0.0.1:8786", said.append).watch_workers(done, every_s=0.01)
    assert said == ["warning: tcp://127.0.0.1:8786: the Dask scheduler has had no worker for 0.025 s (stopped or lost); "
                    "the work waits for one to join (Ctrl-C stops it: rerun the command to resume)",
                    "tcp://127.0.0.1:8786: a Dask worker joined; the work goes on"]

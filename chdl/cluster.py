"""Running chdl's parallel work on a Dask ``distributed`` cluster (``--scheduler``) instead of local processes.

``--scheduler local:N`` starts a ``LocalCluster`` of N single-threaded worker processes on 127.0.0.1
(dashboard off) for the length of the command; ``--scheduler tcp://HOST:PORT`` (any address Dask
accepts: ``tls://``, ``ucx://`` ...) uses a running cluster (``dask scheduler`` + ``dask worker``).

The tasks are the ones the local path runs in its process pool — whole shards for ``chdl curate``, whole
recordings for ``chdl simulate corpus`` — so one task still owns its output. A task whose worker is lost
is rerun on another worker by the scheduler (up to ``distributed.scheduler.allowed-failures`` times), and
a rerun rewrites the same bytes. Workers must run the same chdl / NumPy / SciPy / zarr / numcodecs /
OpenCV / Python versions as the client (other versions could write other bytes): checked on connecting, and
by every task before it runs (once per worker process and map call), so a worker that joins later is checked too
and see the inputs and outputs at the same paths or URLs (:meth:`Cluster.check_visible`).

Dask is imported here only, and only when a cluster is used: ``import chdl``, ``import curation`` and
the ``--workers`` path do not need it (it is the ``scale`` extra: ``pip install 'chdl[scale]'``).

The local path's process pools set their workers up with :func:`init_pool_worker` (both commands).
"""

from __future__ import annotations

import contextlib
import copy
import platform
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from chdl.provenance import code_fingerprint

LOCAL_PREFIX = "local:"
CONNECT_TIMEOUT_S = 20  # reaching the scheduler
WORKERS_TIMEOUT_S = 60  # a running scheduler without any worker
NO_WORKER_GRACE_S = 10.0  # mid-run, how long the scheduler may have no worker before the command says so


def init_pool_worker() -> None:
    """Set-up of a worker of a local process pool (``--workers``; Dask workers are the cluster's own):

    * Ctrl-C -- SIGINT to the whole process group -- is the parent's to handle (it ends the pool), and SIGTERM
      just ends the worker, whatever handler a forking parent had: an interrupted command prints one line,
      not a traceback per worker;
    * the worker ends as soon as its parent is gone: the workers of a SIGKILLed ``chdl curate`` went on with
      their shard and printed BrokenPipeError tracebacks sending it to the dead parent, those of ``chdl
      simulate corpus`` went on writing runs that a rerun was clearing and redoing. On Linux the kernel sends
      the SIGTERM above when the parent dies (``PR_SET_PDEATHSIG``: at once, before the worker can hand a
      result to the dead parent; a thread woken by the parent's exit was measured to lose that race now and
      then); elsewhere a thread waits on the parent's sentinel. Either way a parent already gone ends the
      worker at once. What a worker leaves half-written is redone by the rerun."""
    import multiprocessing as mp
    import os
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = mp.parent_process()
    if parent is None:
        return
    if sys.platform.startswith("linux") and os.getppid() == parent.pid:  # (a forkserver child has another parent)
        import ctypes

        if ctypes.CDLL(None).prctl(1, signal.SIGTERM) == 0:  # PR_SET_PDEATHSIG
            if not parent.is_alive():  # it died before the call
                os._exit(1)
            return

    def exit_with_parent() -> None:
        parent.join()  # returns when the parent process is gone
        os._exit(1)

    threading.Thread(target=exit_with_parent, name="chdl-parent-watch", daemon=True).start()


class ClusterError(RuntimeError):
    """The cluster cannot run the work (unreachable, mismatched versions, a path workers do not see,
    a task that kept killing workers). One-line message naming the scheduler and the worker."""


class WorkerDied(ClusterError):
    """A local pool worker process died in the middle of the work (:func:`pool_map_unordered`)."""


def pool_map_unordered(fn: Callable, tasks: list, workers: int, context, initializer: Callable | None = None,
                       initargs: tuple = ()) -> Iterator[Any]:
    """Yield ``fn(task)`` for every task, as they finish, from a pool of ``min(workers, len(tasks))`` local
    processes of the multiprocessing ``context``, each set up by ``initializer(*initargs)`` (give it
    :func:`init_pool_worker`'s set-up). Raises :class:`WorkerDied` when a worker process dies (killed, out of
    memory, a crash in native code): ``multiprocessing.Pool`` replaces such a worker but loses its task and
    waits for it for ever (a ``chdl curate`` whose worker was SIGKILLed hung at 73 %); a
    ``concurrent.futures.ProcessPoolExecutor`` reports it (BrokenProcessPool). When the caller stops early
    (an error, Ctrl-C) the workers are ended at once, as ``Pool``'s exit did, not left to finish their task."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_started_worker,
                               initargs=(initializer, initargs))
    finished = False
    try:
        with _stop_signals_blocked():  # (the first submit forks the workers)
            pending = {pool.submit(fn, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise WorkerDied("a worker process died (killed, out of memory, or a crash in native code)") from None
                yield result
        finished = True
    finally:
        if not finished:
            # (the executor has no public way to end running workers before Python 3.14's terminate_workers;
            # its process table is what that method reads)
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _stop_signal_set() -> set:
    """STOP_SIGNALS as this platform has them (for pthread_sigmask)."""
    import signal

    return {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}


@contextlib.contextmanager
def _stop_signals_blocked():
    """Ctrl-C, SIGTERM and SIGHUP held back from this thread while it forks pool workers; one that arrives meanwhile
    is delivered when the block ends. A forked worker starts with the parent's handlers, which raise
    KeyboardInterrupt: a Ctrl-C to the process group during a fork ran them in the child's at-fork hooks, before
    init_pool_worker could ignore it, and printed "Exception ignored ... KeyboardInterrupt" tracebacks (1 curate in
    15 interrupted at start; more under load). The child inherits the block and lifts it in _started_worker."""
    import signal

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signal_set())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _started_worker(initializer: Callable | None, initargs: tuple) -> None:
    """A pool worker's first code: the caller's set-up (init_pool_worker's handlers), then the stop signals that
    _stop_signals_blocked held back from the fork are let through."""
    import signal

    if initializer is not None:
        initializer(*initargs)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _stop_signal_set())


def _versions() -> dict[str, str]:
    """What must match between the client and every worker for byte-identical output."""
    import cv2
    import numcodecs
    import numpy
    import scipy
    import zarr

    import chdl

    # (the packages whose code decides the bytes a task writes: two checkouts of one version with other edits
    # differ here; workers started from another tree passed the version check)
    return {"chdl": chdl.__version__, "chdl code": code_fingerprint(("acquisition", "curation", "chdl")), "numpy": numpy.__version__,
            "scipy": scipy.__version__, "zarr": zarr.__version__, "numcodecs": numcodecs.__version__,
            "opencv": cv2.__version__, "python": ".".join(platform.python_version_tuple()[:2])}


def _missing(paths: list[str]) -> list[str]:
    """The paths (local or fsspec URLs) this process cannot see."""
    from chdl.dataset import dataset_path

    return [p for p in paths if not dataset_path(p).exists()]


# worker side: the context of the current map (what a local pool's initializer installs), per process
_installed = {"token": None}
_install_lock = threading.Lock()


def _worker_label(address: str, name: Any) -> str:
    """A worker as errors name it: its address, and the name given with ``dask worker --name`` (what its operator
    knows it by; a LocalCluster's are numbers, left out)."""
    return f"{address} ({name})" if isinstance(name, str) and name != address else address


class WorkerVersionError(RuntimeError):
    """Raised in a task on a worker whose versions differ from the client's (see :func:`_run_task`)."""


def _version_diff(mine: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """``"NAME THEIRS (here MINE)"`` for every entry of :func:`_versions` that differs; ``mine`` is the client's.
    The chdl code digest is said for what it is (a trial could not match it with anything chdl prints)."""
    return [f"{k} {theirs.get(k)} (here {v})" if k != "chdl code" else
            f"other chdl source code (its acquisition, curation and chdl packages digest to {theirs.get(k)}, here to "
            f"{v}: the same version with other edits; start the worker from the same checkout or install)"
            for k, v in mine.items() if theirs.get(k) != v]


def _run_task(fn: Callable, task: Any, init: Callable | None, ctx: Any, token: str, versions: dict[str, str]) -> Any:
    # Once per worker process and map call: the versions check. Cluster.check_versions asks the workers there
    # at connect time; a worker that joins later (other code, other packages) would otherwise write other bytes
    # unchecked (found in a trial: flipped bytes that `chdl verify` passed), so every task carries the client's.
    with _install_lock:
        if _installed["token"] != token:
            diff = _version_diff(versions, _versions())
            if diff:
                from distributed import get_worker

                worker = get_worker()
                raise WorkerVersionError(f"worker {_worker_label(worker.address, worker.name)} runs {', '.join(diff)}")
            if init is not None:
                init(ctx)
            _installed["token"] = token
    return fn(task)


class Cluster:
    """A connected Dask client. Use :func:`connect`."""

    def __init__(self, client, spec: str, log: Callable[[str], None] | None = None):
        self.client = client
        self.spec = spec
        self.log = log or (lambda msg: print(msg, file=sys.stderr))

    @property
    def address(self) -> str:
        return self.client.scheduler.address

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def _label(self, address: str) -> str:
        """:func:`_worker_label` of the worker at ``address``."""
        info = self.client.scheduler_info(n_workers=-1)["workers"].get(address, {})
        return _worker_label(address, info.get("name"))

    def check_versions(self) -> None:
        """ClusterError naming the first worker whose package versions (or chdl code) differ from this process's,
        or that cannot tell (chdl does not import there)."""
        mine = _versions()
        try:
            reports = self.client.run(_versions)
        except Exception as e:  # raised on a worker: e.g. chdl (or one of the packages) does not import there
            raise ClusterError(f"{self.spec}: a worker could not report its package versions ({type(e).__name__}: "
                               f"{e}); does chdl import on every worker?".replace("\n", " ")) from None
        for worker, theirs in sorted(reports.items()):
            diff = _version_diff(mine, theirs)
            if diff:
                raise ClusterError(f"{self.spec}: worker {self._label(worker)} runs {', '.join(diff)}; "
                                   "byte-identical output needs the same versions everywhere")

    def check_visible(self, paths: Iterable[str]) -> None:
        """ClusterError unless every worker sees every path (RAW runs, OUT) at the same path or URL."""
        paths = [str(p) for p in paths]
        for worker, missing in sorted(self.client.run(_missing, paths).items()):
            if missing:
                raise ClusterError(f"{self.spec}: worker {self._label(worker)} cannot see {missing[0]} "
                                   f"({len(missing)} of {len(paths)} paths); workers need the inputs and "
                                   "the output on shared storage, at the same path or URL")

    def map_unordered(self, fn: Callable, tasks: list, init: Callable | None = None, ctx: Any = None) -> Iterator:
        """Yield ``fn(task)`` for every task as the tasks finish, each run on some worker after
        ``init(ctx)`` has run once in that worker process for this call (like a process pool's
        initializer; ``fn``, ``init`` and ``ctx`` must pickle). An exception in a task is raised here;
        a task that was running on a lost worker is rerun elsewhere. Tasks not yet started are
        cancelled if the caller stops early."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker, as_completed

        token = uuid.uuid4().hex
        name = getattr(fn, "__name__", "task")
        versions = _versions()
        futures = [self.client.submit(_run_task, fn, t, init, ctx, token, versions, key=f"chdl-{name}-{i}-{token}",
                                      pure=False)
                   for i, t in enumerate(tasks)]
        done = threading.Event()
        threading.Thread(target=self.watch_workers, args=(done,), name="chdl-dask-workers", daemon=True).start()
        try:
            for future, result in as_completed(futures, with_results=True):
                if future.cancelled() or isinstance(result, CancelledError):  # (handed back, not raised)
                    raise ClusterError(f"{self.spec}: the Dask scheduler cancelled the work (it was lost or "
                                       "restarted)")
                yield result
        except WorkerVersionError as e:  # a worker that joined after the connect-time check
            raise ClusterError(f"{self.spec}: {e} (it joined after the start); byte-identical output needs the same "
                               "versions everywhere: stop that worker") from None
        except KilledWorker as e:
            raise ClusterError(f"{self.spec}: task {e.task} was running on {e.allowed_failures + 1} workers "
                               "that died; see the worker logs") from None
        except (CancelledError, OSError, TimeoutError) as e:  # the scheduler died or is unreachable mid-run
            raise ClusterError(f"{self.spec}: lost the Dask scheduler ({type(e).__name__}: {e})".replace("\n", " ")) \
                from None
        finally:
            done.set()
            with contextlib.suppress(Exception):  # (nothing to cancel on a scheduler that is gone)
                self.client.cancel(futures)

    def watch_workers(self, done: threading.Event, every_s: float = 1.0) -> None:
        """Until ``done``: say when the scheduler has had no worker for NO_WORKER_GRACE_S (every worker stopped or
        lost: the work then waits for one to join, and a curate sat at its bar for minutes without a word), and
        when one joins again. Reads the client's view of the scheduler, which it refreshes every few seconds."""
        since, said = None, False
        while not done.wait(every_s):
            try:
                n = len(self.client.scheduler_info()["workers"])
            except Exception:  # noqa: BLE001 - a scheduler that is gone: map_unordered says so
                continue
            if n:
                if said:
                    self.log(f"{self.spec}: a Dask worker joined; the work goes on")
                since, said = None, False
                continue
            since = since if since is not None else time.monotonic()
            if not said and time.monotonic() - since >= NO_WORKER_GRACE_S:
                self.log(f"warning: {self.spec}: the Dask scheduler has had no worker for {NO_WORKER_GRACE_S:g} s "
                         "(stopped or lost); the work waits for one to join (Ctrl-C stops it: rerun the command to "
                         "resume)")
                said = True


def local_cluster(n_workers: int):
    """A ``distributed.LocalCluster`` of ``n_workers`` single-threaded worker processes, listening on
    127.0.0.1 only: no dashboard, and the scheduler's HTTP routes (health, metrics) on a free loopback
    port rather than 8787 (so that several clusters on one machine do not collide). The workers'
    statistical profiler, which only feeds the dashboard, is off (it samples every thread's stack
    every 10 ms; ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False`` does the same for ``dask worker``)."""
    import dask
    from distributed import LocalCluster

    # The nannies hand this config to every worker process they start, also to one restarted after a crash
    # (without `config=` a restarted worker gets the config current at that moment: profiling on again).
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        config = copy.deepcopy(dask.config.config)
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                            config=config)


def _probe(spec: str) -> None:
    """Fail at once where the address cannot be a scheduler: a port out of range, or nothing listening there
    (connection refused). The client retries a refused connection until CONNECT_TIMEOUT_S (a mistyped port took 20
    s and read as a timeout). A slow or filtered network is left to the client's own timeout. (The scheduler, when it
    is there, logs at INFO that a connection closed before its handshake.)"""
    import socket
    import urllib.parse

    url = urllib.parse.urlsplit(spec)
    if url.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = url.hostname, url.port
    except ValueError:
        raise ClusterError(f"--scheduler {spec}: the port must be a number from 1 to 65535") from None
    if not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        raise ClusterError(f"{spec}: nothing listens there (connection refused): is the Dask scheduler running, and "
                           "at this host and port?") from None
    except OSError:
        pass


def _client(spec: str):
    """A ``distributed.Client`` of the scheduler at ``spec``, or ClusterError (one line) if none answers as a Dask
    scheduler within CONNECT_TIMEOUT_S. The client is made in a thread that is given up on after that time: its own
    timeout does not cover every way a wrong address fails (an HTTP server at that port kept it waiting for ever;
    a server that sends something else made it read a length of 2.8 EiB and fail with MemoryError)."""
    from distributed import Client

    _probe(spec)
    box: dict = {}

    def make():
        try:
            box["client"] = Client(spec, timeout=CONNECT_TIMEOUT_S)
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    thread = threading.Thread(target=make, name="chdl-dask-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 5)
    if thread.is_alive():
        raise ClusterError(f"{spec}: no answer from a Dask scheduler within {CONNECT_TIMEOUT_S} s (something else "
                           "listens there?)")
    if "error" in box:
        e = box["error"]
        if isinstance(e, KeyboardInterrupt):
            raise e
        raise ClusterError(f"{spec}: cannot reach the Dask scheduler ({type(e).__name__}: {e})".replace("\n", " ")) \
            from None
    return box["client"]


@contextlib.contextmanager
def connect(spec: str, log: Callable[[str], None] | None = None) -> Iterator[Cluster]:
    """A :class:`Cluster` for ``--scheduler`` ``spec``: ``local:N`` (a LocalCluster of N worker
    processes, one thread each, on 127.0.0.1 without dashboard, closed on exit) or a scheduler address.
    ClusterError if it cannot be used (bad spec, unreachable or not a Dask scheduler, no workers, other versions).
    ``log``: where to say that it waits for a worker to join (default stderr)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    with _quiet_client_logs():
        yield from _connect(spec, log)


@contextlib.contextmanager
def _quiet_client_logs():
    """The client side's own logs of a lost scheduler (a reconnect traceback from ``distributed.client``) are
    silenced while chdl holds a client: the command says what happened in one line (ClusterError)."""
    import logging

    import importlib

    with contextlib.suppress(ImportError):
        importlib.import_module("distributed")  # (its import sets these loggers' levels: set ours after it)
    loggers = [logging.getLogger(n) for n in ("distributed.client", "distributed.comm", "distributed.core",
                                              "distributed.batched")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _connect(spec: str, log: Callable[[str], None]) -> Iterator[Cluster]:
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError(f"--scheduler {spec}: needs dask.distributed (pip install 'chdl[scale]')") from None
    with contextlib.ExitStack() as stack:
        if spec.startswith(LOCAL_PREFIX):
            n = spec[len(LOCAL_PREFIX):]
            if not n.isdigit() or int(n) < 1:
                raise ClusterError(f"--scheduler {spec}: expected local:N with N >= 1 worker processes")
            local = stack.enter_context(local_cluster(int(n)))
            client = stack.enter_context(Client(local))
        else:
            if "://" not in spec:
                raise ClusterError(f"--scheduler {spec}: expected tcp://HOST:PORT (a Dask scheduler) or local:N")
            client = stack.enter_context(_client(spec))
            try:
                if not client.scheduler_info()["workers"]:
                    log(f"waiting up to {WORKERS_TIMEOUT_S} s for a Dask worker to join the scheduler at {spec}")
                client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            except TimeoutError:
                raise ClusterError(f"{spec}: no Dask worker joined the scheduler within {WORKERS_TIMEOUT_S} s") from None
        cluster = Cluster(client, spec, log)
        cluster.check_versions()
        yield cluster

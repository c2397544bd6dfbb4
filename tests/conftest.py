"""Fixtures shared across test packages, and how the suite shares the machine's cores."""

import os
import signal

import pytest

# The suite runs in parallel (pyproject's addopts: `-n auto --dist loadfile`, pytest-xdist; `-n 0` runs it in one
# process). Each test file runs whole in one worker, so its module fixtures are built once. Serial, the suite took
# 1413 s on the 2-core CI machine (2026-12-02), over the 20 min CI budget with the install; two workers, 815 s.
MAX_WORKERS = 4  # many cores would otherwise start as many workers, each with torch and the processes its tests start


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: `-p no:xdist` works too
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per usable core, at most MAX_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def _share_the_cores():
    """Under N workers each worker, and every process its tests start, gets its share of the cores as torch and
    OpenMP threads: two workers each running 2-thread torch on 2 cores made a training test 2.4x slower (20 s
    alone, 48 s beside another). Set before any test module imports torch; an OMP_NUM_THREADS set by the caller
    wins. In-process and subprocess results stay comparable: both run the same thread count."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


_share_the_cores()

# Several tests send SIGINT (Ctrl-C) to the chdl processes they start. A shell that starts pytest in the background
# (`bash .ci/run &`, nohup) leaves SIGINT ignored, and an ignored signal stays ignored in every child, so those
# children would never see the Ctrl-C (5 tests failed so, 2026-12-01). A handled signal resets to the default in a
# child: handle it here, as Python does when it starts in the foreground.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def dask_cluster():
    """A real Dask LocalCluster of 2 single-threaded worker processes on 127.0.0.1 (no dashboard), and a
    client of it: ``(cluster, client)``. Started once, on first use (~2-4 s)."""
    from distributed import Client

    from chdl.cluster import local_cluster

    with local_cluster(2) as cluster, Client(cluster) as client:
        yield cluster, client


@pytest.fixture
def chromium():
    """A headless Debian Chromium driven by Playwright (no browser download): ``browser`` with
    ``new_page()``; closed after the test. Skips when Chromium or Playwright is missing, unless
    ``CHDL_REQUIRE_CHROMIUM=1`` (``.ci/run`` sets it where it could install Chromium): then it fails."""
    import os
    import shutil

    path = shutil.which("chromium") or shutil.which("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if path is None or sync_playwright is None:
        missing = "chromium (apt-get install chromium)" if path is None else "playwright (the test extra)"
        if os.environ.get("CHDL_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"CHDL_REQUIRE_CHROMIUM=1 but {missing} is missing")
        pytest.skip(f"{missing} is not installed: the real-browser dashboard tests need it")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses to run as root with its sandbox
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=args, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()

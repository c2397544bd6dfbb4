"""Fixtures shared across test packages."""

import signal

import pytest

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

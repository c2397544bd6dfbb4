"""Fixtures shared across test packages."""

import pytest


@pytest.fixture(scope="session")
def dask_cluster():
    """A real Dask LocalCluster of 2 single-threaded worker processes on 127.0.0.1 (no dashboard), and a
    client of it: ``(cluster, client)``. Started once, on first use (~2-4 s)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield cluster, client

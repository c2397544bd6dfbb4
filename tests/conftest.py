"""Fixtures shared across test packages."""

import pytest


@pytest.fixture(scope="session")
def dask_cluster():
    """A real Dask LocalCluster of 2 single-threaded worker processes on 127.0.0.1 (no dashboard), and a
    client of it: ``(cluster, client)``. Started once, on first use (~2-4 s)."""
    from distributed import Client

    from chdl.cluster import local_cluster

    with local_cluster(2) as cluster, Client(cluster) as client:
        yield cluster, client

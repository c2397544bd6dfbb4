"""chdl.provenance: what records say about the code that made them."""

import os
import shutil
import subprocess

import pytest

from chdl.provenance import git_state


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("git") is None,
                    reason="needs root (to give a checkout to another user) and git")
def test_a_checkout_owned_by_another_user_still_gives_its_commit(tmp_path, monkeypatch):
    """On a shared install the checkout belongs to the admin; git refuses it to every other user ("dubious
    ownership"), and their datasets and evals recorded commit null."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))  # (no safe.directory of this user's own)
    for args in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    for d, _, files in os.walk(repo):
        for name in [d, *(os.path.join(d, f) for f in files)]:
            os.lchown(name, 65534, 65534)
    refused = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr  # what chdl met
    assert git_state(repo) == {"commit": commit, "dirty": False}

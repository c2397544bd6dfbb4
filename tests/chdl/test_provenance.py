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


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_checkout_with_an_edited_tracked_file_is_dirty(tmp_path):
    """A record made from edited code must say so (``git_dirty``): a number from local edits looked as if it came
    from the commit. An untracked file alone does not make it dirty."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "x")
    commit = _git(repo, "rev-parse", "HEAD")
    git_state.cache_clear()
    try:
        (repo / "notes.txt").write_text("untracked")
        assert git_state(repo) == {"commit": commit, "dirty": False}
        git_state.cache_clear()
        (repo / "a.py").write_text("x = 2\n")
        assert git_state(repo) == {"commit": commit, "dirty": True}
    finally:
        git_state.cache_clear()


def test_the_code_fingerprint_changes_with_one_byte_of_source(tmp_path, monkeypatch):
    """The fingerprint stands for the source itself: two trees with the same file names that differ in one byte
    must differ (a digest of the names alone would call edited code the same)."""
    import sys

    from chdl.provenance import code_fingerprint

    pkg = tmp_path / "fp_probe_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fp_probe_pkg", raising=False)
    code_fingerprint.cache_clear()
    try:
        before = code_fingerprint(("fp_probe_pkg",))
        assert len(before) == 16 and code_fingerprint(("fp_probe_pkg",)) == before
        code_fingerprint.cache_clear()
        (pkg / "sub" / "mod.py").write_text("VALUE = 2\n")  # one byte
        after = code_fingerprint(("fp_probe_pkg",))
        assert after != before
        code_fingerprint.cache_clear()
        (pkg / "sub" / "mod.py").write_text("VALUE = 1\n")
        assert code_fingerprint(("fp_probe_pkg",)) == before  # the bytes, not when they were written
    finally:
        code_fingerprint.cache_clear()

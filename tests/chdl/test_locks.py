"""chdl.locks.exclusive_output: one chdl process writes an output at a time. Two at once raced: two `import video
--overwrite` into one dataset lost the dataset they replaced; two evals, monitor-evals or predicts into one --out
both said they succeeded while one's results were gone; a second `simulate corpus` cleared the first's run in
progress. The second writer is now refused, naming the first's pid."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from chdl.locks import OutputInUse, exclusive_output, writer_lock_path


@pytest.fixture
def held(tmp_path):
    """Holds the writer lock of tmp_path/"out" in another process; yields (path, pid)."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from chdl.locks import take_lock; take_lock(Path(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(60)", str(writer_lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield out, holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_naming_the_first(held):
    out, pid = held
    with pytest.raises(OutputInUse, match=rf"^{out}: in use by another chdl process writing it \(pid {pid}\)"):
        with exclusive_output(out):
            pass
    assert not out.exists()


def test_the_lock_is_released_and_its_file_removed(tmp_path):
    out = tmp_path / "sub" / "out"
    with exclusive_output(out):
        assert writer_lock_path(out).is_file()
        with exclusive_output(tmp_path / "other"):  # another output: its own lock
            pass
    assert not writer_lock_path(out).exists()
    with exclusive_output(out):  # taken again
        pass


@pytest.mark.parametrize("command", [
    ["simulate", "corpus", "{out}", "--sequences", "1", "--width", "32", "--height", "24"],
    ["predict", "--checkpoint", "{ck}", "--input", "{ck}", "--out", "{out}"],
    ["monitor-eval", "{runs}", "--out", "{out}"],
])
def test_commands_refuse_an_output_another_process_writes(held, tmp_path, command):
    from chdl.cli import main

    out, pid = held
    (tmp_path / "x.pt").write_bytes(b"")
    (tmp_path / "runs").mkdir()
    args = [a.format(out=out, ck=tmp_path / "x.pt", runs=tmp_path / "runs") for a in command]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == \
        f"Error: {out}: in use by another chdl process writing it (pid {pid}); wait for it to end or stop it", r.output
    assert not out.exists() or not any(out.iterdir())  # (simulate corpus makes its folder first)


def test_an_import_refuses_a_dataset_another_process_writes(held):
    from curation.importers.common import ImporterInputError, write_sequences

    out, pid = held
    with pytest.raises(ImporterInputError, match=rf"in use by another chdl process writing it \(pid {pid}\)"):
        write_sequences(out, lambda r: {"frames": np.zeros((len(r), 2, 1, 8, 8), np.uint8)}, n_sequences=2,
                        overwrite=True, progress=False, frames_per_sequence=2, in_frames=1, out_frames=1, height=8,
                        width=8)
    assert not out.exists()


def test_lock_files_follow_the_umask_so_a_group_member_can_take_them_next(tmp_path):
    """Lock files were made 0644 whatever the umask: under umask 002 on a shared folder, a colleague (same group)
    could not resume an interrupted curate or training ("cannot write in . (Permission denied)")."""
    import os

    from chdl.locks import release_lock, take_lock

    old = os.umask(0o002)
    try:
        fd = take_lock(tmp_path / "a.lock")
    finally:
        os.umask(old)
    assert (tmp_path / "a.lock").stat().st_mode & 0o777 == 0o664
    release_lock(tmp_path / "a.lock", fd)


def test_another_users_lock_file_is_taken_over_when_no_one_holds_it_and_named_when_someone_does(held, tmp_path,
                                                                                                 monkeypatch):
    """This user cannot open another user's lock file for writing (emulated: os.open refuses it, as the kernel does
    for a 0644 file of another user). Left by a process that ended, it is replaced; held by a running process, the
    holder is named (it was "Permission denied" in both cases, and `chdl info` called a running curate stopped)."""
    import os

    from chdl.locks import LockHeld, lock_holder, release_lock, take_lock

    real_open = os.open

    def as_another_user(path, flags, *mode):
        if str(path) in others and os.path.exists(path) and os.stat(path).st_ino == others[str(path)] \
                and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *mode)

    stale = tmp_path / "stale.lock"
    stale.write_text("999999\n")  # its process ended
    out, pid = held
    others = {str(stale): stale.stat().st_ino, str(writer_lock_path(out)): writer_lock_path(out).stat().st_ino}
    monkeypatch.setattr(os, "open", as_another_user)
    assert lock_holder(writer_lock_path(out)) == str(pid) and lock_holder(stale) is None
    with pytest.raises(LockHeld, match=rf"locked by pid {pid}"):
        take_lock(writer_lock_path(out))
    fd = take_lock(stale)  # replaced: a new file of this user's
    assert stale.read_text() == f"{os.getpid()}\n" and lock_holder(stale) == str(os.getpid())
    release_lock(stale, fd)

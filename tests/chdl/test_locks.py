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

"""The benchmark scripts under tools/ refuse what cannot be measured before measuring (tools/cli_args.py): a count
of 0 ran the whole benchmark (or printed a table of nothing) with exit 0, and a --json path in a missing folder
was a traceback after the measuring."""

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.parametrize("args,error", [
    (["bench_model.py", "--presets", "nope", "--no-cuda"], "argument --presets: unknown DIFFUMA preset 'nope'"),
    (["bench_model.py", "--quick", "--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["bench_cnn_baselines.py", "--quick", "--json", "/nonexistent/d/x.json"],
     "argument --json: /nonexistent/d/x.json: the folder /nonexistent/d does not exist"),
    (["bench_step_cost.py", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["anomaly_separability.py", "--lanes", "0"], "argument --lanes: must be at least 1, got 0"),
    (["anomaly_separability.py", "--magnitudes", "abc"], "argument --magnitudes: 'abc': expected comma-separated numbers"),
    (["render_corpus.py", "--frames", "0"], "argument --frames: must be at least 20, got 0"),
])
def test_bad_arguments_are_refused_before_measuring(args, error):
    r = subprocess.run([sys.executable, str(TOOLS / args[0]), *args[1:]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and error in r.stderr.strip().splitlines()[-1], r.stderr
    assert "Traceback" not in r.stderr and not r.stdout.strip()


def test_render_corpus_writes_where_the_user_is(tmp_path):
    """--out is the user's path, not one relative to the repository (the corpus landed inside the clone)."""
    r = subprocess.run([sys.executable, str(TOOLS / "render_corpus.py"), "--out", "c", "--sequences", "1",
                        "--width", "64", "--height", "48", "--workers", "1"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c" / "corpus.json").is_file() and not (TOOLS.parent / "c").exists()

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
    # (2026-12-02) each of these ran, then crashed after measuring, or measured a default instead
    (["render_corpus.py", "--quik"], "unrecognized arguments: --quik"),  # ran the full benchmark
    (["bench_curate.py", "--quick", "--lanes", "0"], "argument --lanes: must be at least 1, got 0"),  # 0 meant 40
    (["bench_curate.py", "--quick", "--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["bench_curate.py", "--json", "/nonexistent/x.json"], "argument --json: /nonexistent/x.json: the folder"),
    (["bench_qc_real.py", "--replicas", "0"], "argument --replicas: must be at least 1, got 0"),
    (["bench_qc_real.py", "--json", "/nonexistent/q.json"], "argument --json: /nonexistent/q.json: the folder"),
    (["bench_monitor.py", "--frames", "5"], "argument --frames: must be at least 20, got 5"),
    (["bench_monitor.py", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["bench_monitor.py", "--scorer", "/nonexistent.json"], "argument --scorer: /nonexistent.json: no such file"),
    (["bench_loader.py", "--model-rate", "0"], "argument --model-rate: must be more than 0, got 0"),
    (["bench_loader.py", "--passes", "0"], "argument --passes: must be at least 1, got 0"),
    (["bench_loader.py", "--data", "/nonexistent.zarr"], "argument --data: /nonexistent.zarr: no such folder"),
    (["bench_capture.py", "--seconds", "0"], "argument --seconds: must be more than 0, got 0"),
    (["bench_capture.py", "--json", "/nonexistent/x.json"], "argument --json: /nonexistent/x.json: the folder"),
    (["bench_scale.py", "--sequences", "0"], "argument --sequences: must be at least 1, got 0"),  # (2026-12-02 s16)
    (["bench_scale.py", "--json", "/nonexistent/s.json"], "argument --json: /nonexistent/s.json: the folder"),
    (["bench_checksums.py", "--dir", "/nonexistent"], "argument --dir: /nonexistent: no such folder"),
    (["monitor_operating_point.py", "run", "--fa-per-hour", "0"], "argument --fa-per-hour: must be more than 0"),
    (["curate_kill_sweep.py", "/nonexistent", "w", "--every", "1"], "argument raw: /nonexistent: no such folder"),
    (["curate_kill_sweep.py", "/tmp", "/tmp", "--every", "0"], "argument work: /tmp: exists and is not an empty folder"),
    (["monitor_viky.py", "--out", "/tmp"], "argument --out: /tmp: exists and is not an empty folder"),  # emptied it
    (["bench_registration.py", "--videos", "/nonexistent"], "--videos /nonexistent: tree.avi, box.mp4, cup.mp4, "
                                                            "Megamind.avi missing"),
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


def test_quickstart_deletes_only_a_folder_it_made(tmp_path):
    """CHDL_DEMO_DIR=<someone's folder> deleted it (rm -rf before anything else); now only an empty folder or one
    an earlier quickstart marked (.chdl-demo) is replaced. CHDL=false stops the run at its first command."""
    env = {"PATH": "/usr/bin:/bin", "CHDL": "false"}

    def quickstart(demo):
        return subprocess.run(["bash", str(TOOLS / "quickstart.sh")], env={**env, "CHDL_DEMO_DIR": str(demo)},
                              capture_output=True, text=True)

    victim = tmp_path / "thesis"
    (victim / "notes").mkdir(parents=True)
    (victim / "notes" / "ch1.txt").write_text("x")
    res = quickstart(victim)
    assert res.returncode == 1 and (victim / "notes" / "ch1.txt").read_text() == "x"
    assert f"quickstart: {victim} exists and is not an earlier demo (no .chdl-demo in it)" in res.stderr
    demo = tmp_path / "demo"
    res = quickstart(demo)  # new: made and marked, then `false` fails the capture step
    assert res.returncode == 1 and (demo / ".chdl-demo").is_file() and "1/5 capture" in res.stderr
    (demo / "old-output").mkdir()
    res = quickstart(demo)  # an earlier demo: started afresh
    assert res.returncode == 1 and not (demo / "old-output").exists() and (demo / ".chdl-demo").is_file()


def test_quickstart_follows_a_symlink_to_an_earlier_demo(tmp_path):
    """CHDL_DEMO_DIR=link (to an earlier demo): the link was replaced by a new folder, the old demo left behind."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / ".chdl-demo").write_text("x")
    (tmp_path / "demo" / "old").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "demo")
    res = subprocess.run(["bash", str(TOOLS / "quickstart.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "CHDL": "false", "CHDL_DEMO_DIR": str(tmp_path / "link")})
    assert res.returncode == 1 and (tmp_path / "link").is_symlink() and not (tmp_path / "demo" / "old").exists()
    assert (tmp_path / "demo" / ".chdl-demo").is_file()

"""The chdl command line, run as a user runs it: a real subprocess."""

import json
import subprocess
import sys

import numpy as np

import chdl
from chdl.cli import COMMANDS
from chdl.dataset import (FLAG_ILLUMINATION, FLAG_MISSING, FLAG_RECONSTRUCTED, FLAG_VIBRATION, DatasetWriter,
                          reconstruction_bits)


def run(*args):
    return subprocess.run([sys.executable, "-m", "chdl", *args], capture_output=True, text=True)


def test_help_lists_every_command_and_version():
    r = run("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in r.stdout
    v = run("--version")
    assert v.returncode == 0 and chdl.__version__ in v.stdout


def test_every_command_resolves():
    from chdl.cli import main
    import click

    ctx = click.Context(main)
    for name in COMMANDS:
        assert isinstance(main.get_command(ctx, name), click.Command), name


def test_info(tmp_path):
    path = tmp_path / "d.zarr"
    w = DatasetWriter.create(path, n_sequences=2, frames_per_sequence=10, channels=1, height=6, width=8,
                             sequences_per_shard=2, runs=["r"], provenance={"command": "chdl curate x y"},
                             qc_score_names=["sharpness"])
    flags = np.zeros((2, 10), np.uint8)
    flags[0, 3] = FLAG_VIBRATION | FLAG_RECONSTRUCTED | reconstruction_bits("flow")
    flags[1, 2] = FLAG_MISSING | FLAG_RECONSTRUCTED | reconstruction_bits("nearest")
    flags[1, 5] = FLAG_ILLUMINATION | FLAG_RECONSTRUCTED  # written before the method was recorded
    w.write_shard(0, frames=np.zeros((2, 10, 1, 6, 8), np.uint8), split=np.array([0, 1]), qc_flags=flags)
    r = run("info", str(path))
    assert r.returncode == 1 and "incomplete dataset" in r.stderr and str(path) in r.stderr
    w.finalize()
    r = run("info", str(path))
    assert r.returncode == 0, r.stderr
    assert "2 sequences x 10 frames x 1x6x8 uint8" in r.stdout and "train 1, val 1" in r.stdout
    assert "(Mono8, max_value 255)" in r.stdout and "integrity    every shard file present; BLAKE3" in r.stdout
    assert ("vibration 1, illumination 1, reconstructed 3, missing 1; reconstructed by flow 1, nearest 1, a method "
            "not recorded 1 (written before chdl stored it)") in r.stdout
    j = json.loads(run("info", str(path), "--json").stdout)
    assert j["reconstructed_by"] == {"motion": 0, "flow": 1, "average": 0, "nearest": 1, "not recorded": 1}
    assert j["shape"] == [2, 10, 1, 6, 8] and j["provenance"]["command"] == "chdl curate x y"
    assert j["max_value"] == 255 and j["integrity"] == {"checksums": True, "missing_files": [], "counts_unreliable": False,
                                                       "metadata_problems": []}
    bad = run("info", str(tmp_path / "nope"))
    assert bad.returncode == 1 and "no such dataset" in bad.stderr
    # a dataset QC never ran on (chdl import): its zero counts read as "checked, all clean"
    imported = tmp_path / "i.zarr"
    w = DatasetWriter.create(imported, n_sequences=2, frames_per_sequence=10, channels=1, height=6, width=8,
                             sequences_per_shard=2, runs=[], provenance={"command": "chdl import video a.mp4"})
    w.write_shard(0, frames=np.zeros((2, 10, 1, 6, 8), np.uint8), split=np.array([0, 1]))
    w.finalize()
    r = run("info", str(imported))
    assert r.returncode == 0 and ("qc           not run: 20 frames not checked for vibration or illumination (a "
                                  "dataset written without chdl curate, e.g. by chdl import; chdl curate runs QC on raw "
                                  "recordings)\n") in r.stdout, r.stdout
    assert json.loads(run("info", str(imported), "--json").stdout)["qc_score_names"] == []


# Every command that shows progress bars, by its path under `chdl`.
PROGRESS_COMMANDS = [("capture",), ("simulate", "corpus"), ("simulate", "truth"), ("curate",), ("import", "mnist"),
                     ("import", "weatherbench"), ("import", "video"), ("import", "recordings"), ("train",), ("eval",), ("predict",), ("bench",),
                     ("verify",)]


def test_one_quiet_spelling_on_every_command_that_shows_progress():
    import click

    from chdl.cli import main

    for path in PROGRESS_COMMANDS:
        cmd = main
        for name in path:
            cmd = cmd.get_command(click.Context(cmd), name)
        quiet = [p for p in cmd.params if p.name == "quiet"]
        assert quiet and {"--quiet", "-q"} <= set(quiet[0].opts), path


def test_old_quiet_spellings_are_hidden_aliases():
    import click
    from click.testing import CliRunner

    from chdl.cli.options import quiet_option

    @click.command()
    @click.option("--n", default=0)
    @quiet_option("--no-progress")
    def cmd(n, quiet):
        click.echo(f"quiet={quiet}")

    for args, expected in [([], False), (["-q"], True), (["--quiet"], True), (["--no-progress"], True),
                           (["--no-progress", "--quiet"], True), (["--quiet", "--no-progress"], True)]:
        assert CliRunner().invoke(cmd, args).output.strip() == f"quiet={expected}", args
    assert "--no-progress" not in CliRunner().invoke(cmd, ["--help"]).output


def test_argument_errors_come_before_torch_is_imported(tmp_path):
    """Bad configs, missing datasets and refused outputs are reported without importing torch (fast)."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom chdl.cli import main\n"
            "for args in {args!r}:\n"
            "    r = CliRunner().invoke(main, args)\n"
            "    print(r.exit_code, r.output.strip().splitlines()[-1], 'torch' in sys.modules)\n")
    cases = [["train", "--data", str(tmp_path), "--config", "missing.yaml", "--out", str(tmp_path / "r")],
             ["train", "--data", str(tmp_path / "nope"), "--config", "diffuma_tiny", "--out", str(tmp_path / "r")],
             ["train", "--data", str(tmp_path), "--config", "diffuma_tiny", "--set", "run.lr=abc", "--out", "r"],
             ["eval", "--checkpoint", __file__, "--data", str(tmp_path / "nope")],
             ["predict", "--checkpoint", __file__, "--input", str(tmp_path), "--out", str(tmp_path / "p")]]
    out = subprocess.run([sys.executable, "-c", code.format(args=cases)], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(cases), out.stdout + out.stderr
    assert [line.split(" ")[0] for line in lines] == ["1"] * len(cases)
    assert all(line.endswith(" False") for line in lines), lines
    assert "missing.yaml: config file not found" in lines[0] and "nope: no such dataset" in lines[1]
    assert "--set run.lr=abc: run.lr: must be a number, got 'abc'" in lines[2]


def test_ctrl_c_in_a_command_without_its_own_handler_is_one_line_and_exit_130(tmp_path):
    """chdl import has no Ctrl-C handler of its own: the group's says so in one line (not click's "Aborted!",
    status 1) and the importer leaves no half-written dataset."""
    import signal
    import time

    out = tmp_path / "m.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "import", "mnist", "--out", str(out), "--train", "200000",
                             "--val", "10", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "zarr.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the dataset is being written
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: chdl import stopped before it finished (rerun the same command)"
    assert "Aborted" not in err and "Traceback" not in err
    assert not out.exists()


def test_a_url_where_a_local_path_is_needed_is_a_usage_error(tmp_path):
    """click.Path made `s3://bucket/x` the local `s3:/bucket/x`: outputs went to a folder named `s3:` with a success
    message and a dataset on S3 was "no such dataset"."""
    from click.testing import CliRunner

    from chdl.cli import main

    cases = [(["import", "mnist", "--out", "s3://b/m.zarr"], "--out"),
             (["capture", "--camera", "sim0", "--out", "s3://b/raw"], "--out"),
             (["train", "--data", "s3://b/x.zarr", "--config", "diffuma_tiny", "--out", str(tmp_path / "r")], "--data"),
             (["eval", "--checkpoint", __file__, "--data", "gs://b/x.zarr"], "--data"),
             (["curate", "s3://b/raw", str(tmp_path / "o.zarr")], "RAW")]
    for args, where in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert f"Invalid value for '{where}': '{args[args.index(where) + 1] if where != 'RAW' else 's3://b/raw'}' is a " \
            "URL; this takes a local path" in r.output, r.output
    assert not list(tmp_path.iterdir()) and not (tmp_path / "s3:").exists()


def test_a_bucket_root_is_never_a_dataset(tmp_path):
    """`chdl curate RAW s3://empty-bucket` removed the (empty) bucket as "an empty folder" and then failed to create
    the dataset in it. No request is made: the URL is refused as it is read."""
    import pytest

    from chdl.dataset import DatasetFormatError, dataset_path
    from curation.config import CurateConfig
    from curation.pipeline import CurateError, curate

    for url in ("s3://bucket", "s3://bucket/", "gs://b"):
        with pytest.raises(DatasetFormatError, match="the root of a bucket, not a dataset; name one inside it"):
            dataset_path(url)
    with pytest.raises(CurateError, match=r"^s3://bucket: the root of a bucket, not a dataset; name one inside it, "
                                          r"e\.g\. s3://bucket/name\.zarr$"):
        curate(tmp_path, "s3://bucket", CurateConfig())
    assert str(dataset_path("s3://bucket/x.zarr")) == "s3://bucket/x.zarr"


def test_object_store_credential_and_connection_failures_are_one_line(tmp_path):
    """No credentials gave an 80-line NoCredentialsError traceback (a refused connection, a wrong key: the same)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1", AWS_EC2_METADATA_DISABLED="true")
    for cmd in ("info", "verify"):
        r = subprocess.run([sys.executable, "-m", "chdl", cmd, "s3://bucket/x.zarr"], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip() == ("Error: s3://bucket/x.zarr: the object store cannot be used (NoCredentialsError: "
                                    "Unable to locate credentials)"), r.stderr


def test_simulate_contact_sheet_writes_a_png_where_asked_and_only_there(tmp_path):
    """It wrote PNG bytes into any name (cs.txt) and created a missing folder silently."""
    from click.testing import CliRunner
    from PIL import Image

    from chdl.cli import main

    r = CliRunner().invoke(main, ["simulate", "contact-sheet", str(tmp_path / "cs.png"), "--tile-width", "64"])
    assert r.exit_code == 0, r.output
    im = Image.open(tmp_path / "cs.png")
    assert im.format == "PNG" and im.size[0] == 5 * (64 + 4)  # five tiles a row, each with a white gap after it
    assert all(v == 255 for v in [im.getpixel((64 + k, 30)) for k in range(4)])  # (tiles touched: no edge to see)
    for bad, why in ((tmp_path / "cs.txt", "the contact sheet is a PNG: name it .png"),
                     (tmp_path / "nodir" / "cs.png", f"the folder {tmp_path / 'nodir'} does not exist")):
        r = CliRunner().invoke(main, ["simulate", "contact-sheet", str(bad), "--tile-width", "64"])
        assert r.exit_code == 2 and why in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cs.png"]
    before = (tmp_path / "cs.png").read_bytes()  # an existing picture is kept unless --overwrite (it was replaced)
    r = CliRunner().invoke(main, ["simulate", "contact-sheet", str(tmp_path / "cs.png"), "--tile-width", "80"])
    assert r.exit_code == 1 and "cs.png: already exists; pass --overwrite" in r.output
    assert (tmp_path / "cs.png").read_bytes() == before
    r = CliRunner().invoke(main, ["simulate", "contact-sheet", str(tmp_path / "cs.png"), "--tile-width", "80",
                                  "--overwrite"])
    assert r.exit_code == 0 and Image.open(tmp_path / "cs.png").size[0] == 5 * (80 + 4)


def test_predict_refuses_a_gif_frame_rate_a_gif_cannot_hold(tmp_path):
    """--fps 200 wrote GIF delays of 0 (1/100 s units), which viewers play at their own default speed."""
    (tmp_path / "c.pt").write_bytes(b"")
    r = run("predict", "--checkpoint", str(tmp_path / "c.pt"), "--input", str(tmp_path), "--out", str(tmp_path / "p"),
            "--fps", "200")
    assert r.returncode == 2 and "Invalid value for '--fps': 200.0 is not in the range 0.1<=x<=50." in r.stderr, r.stderr


def test_a_standard_output_that_cannot_be_written_is_one_line(tmp_path):
    """chdl info DATA > /dev/full (likewise --version, --help, a capture that had finished its recording) ended with
    a 30-line OSError traceback. (`info`, not `model-info`: the same path without importing torch, 13-26 s here.)"""
    import os

    if not os.path.exists("/dev/full"):
        import pytest

        pytest.skip("no /dev/full here")
    data = tmp_path / "d.zarr"
    w = DatasetWriter.create(data, n_sequences=1, frames_per_sequence=10, channels=1, height=6, width=8,
                             sequences_per_shard=1, runs=["r"])
    w.write_shard(0, frames=np.zeros((1, 10, 1, 6, 8), np.uint8), split=np.array([0]),
                  qc_flags=np.zeros((1, 10), np.uint8))
    w.finalize()
    for args in (["--version"], ["info", str(data)]):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "chdl", *args], stdout=full, stderr=subprocess.PIPE, text=True)
        assert r.returncode == 1 and r.stderr == "Error: stdout: No space left on device\n", (args, r.stderr)


def test_progress_into_a_log_file_is_thinned_out(monkeypatch):
    """With standard error redirected to a file, bars updated ten times a second on one \r-joined line. Now the
    CLI asks tqdm for one update per 30 s when standard error is not a terminal, unless the user set it."""
    import io
    import os

    from chdl.cli import main

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    main.main(["model-info", "--help"], standalone_mode=False)
    assert os.environ["TQDM_MININTERVAL"] == "30"
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    main.main(["model-info", "--help"], standalone_mode=False)
    assert os.environ["TQDM_MININTERVAL"] == "5"


def test_every_option_of_every_command_says_what_it_is():
    """A CLI sweep found 17 options with no help at all (capture --width/--height/--pixel-format, eval --checkpoint,
    --split, --num-workers, predict --weights, simulate corpus --seed, ...)."""
    import click

    from chdl.cli import main

    ctx = click.Context(main)
    missing = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), f"{path} {name}")
            return
        missing.extend(f"{path} {p.opts[0]}" for p in cmd.params
                       if isinstance(p, click.Option) and not p.hidden and not p.help)

    walk(main, "chdl")
    assert not missing, missing


def test_python_m_chdl_is_not_shadowed_by_a_users_file_in_the_working_folder(tmp_path):
    """`python -m chdl` in a folder holding an acquisition.py imported that file in place of chdl's package."""
    for name in ("acquisition", "curation", "diffuma"):
        (tmp_path / f"{name}.py").write_text('raise SystemExit("the user\'s file was imported")\n')
    r = subprocess.run([sys.executable, "-m", "chdl", "info", str(tmp_path / "none.zarr")], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == f"Error: {tmp_path / 'none.zarr'}: no such dataset", r.stderr


def test_a_second_interrupt_while_the_program_exits_ends_it_quietly():
    """After Ctrl-C a command exits 130 and Python joins its worker threads; a second SIGINT there (GNU timeout signals
    the command and then its process group; a user presses Ctrl-C twice) printed "Exception ignored in: <module
    'threading'>" and a KeyboardInterrupt traceback after curate's one line (a trial, 1 run in 12). Here a command
    stand-in leaves a thread busy for 5 s and the second signal comes 0.3 s into the exit: chdl ends at once, 130,
    nothing on stderr."""
    import time

    code = """if True:
        import concurrent.futures, os, signal, threading, time
        import chdl.cli as cli

        def command():
            concurrent.futures.ThreadPoolExecutor(1).submit(time.sleep, 5)  # joined at exit
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            raise SystemExit(130)

        cli.main = command
        cli.run()
    """
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (130, "") and time.monotonic() - t0 < 4.5, out.stderr
    # a command that finished: a Ctrl-C while the interpreter shuts down (train tears torch down ~2 s after its last
    # line) killed it with a raw signal status; it now exits at once with the command's own, its output kept
    done = code.replace('raise SystemExit(130)', 'print("run folder: r"); raise SystemExit(0)')
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", done], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "run folder: r\n", "") and time.monotonic() - t0 < 4.5, out


def test_the_simulate_corpus_bar_follows_the_frames_on_disk(tmp_path):
    """The render bar moved only when a run finished: the default corpus (two runs on two workers) sat at 0 % for
    minutes and jumped to 100 %. It follows the runs' frames.jsonl lines while they render, and a finished run's
    count as its result gives it."""
    import io
    import time

    from tqdm import tqdm

    from chdl.cli.simulate import _FramesOnDisk

    a, b = tmp_path / "run_00000", tmp_path / "run_00001"
    a.mkdir()
    bar = tqdm(total=20, file=io.StringIO())

    def shown(n):
        deadline = time.monotonic() + 10
        while bar.n != n and time.monotonic() < deadline:
            time.sleep(0.01)
        return bar.n

    with _FramesOnDisk(bar, [a, b], every_s=0.01) as progress:  # (b not started yet: no folder)
        (a / "frames.jsonl").write_text("{}\n" * 3 + '{"torn')
        assert shown(3) == 3
        b.mkdir()
        (b / "frames.jsonl").write_text("{}\n" * 4)
        assert shown(7) == 7
        progress.finished(a, 10)
        assert bar.n == 14
        progress.finished(b, 10)
        assert bar.n == 20
    assert bar.n == 20


def test_after_an_interrupt_a_coroutine_collected_after_its_loop_closed_is_not_reported(monkeypatch):
    """CI: a Ctrl-C of `curate --overwrite` printed its one line, then five "Exception ignored in: <coroutine ...>
    RuntimeError: Event loop is closed" tracebacks as zarr's abandoned coroutines were collected at exit. Only
    those are quieted: any other unraisable exception still reaches the hook before (Python's, which prints it)."""
    import types

    from chdl.cli import quiet_abandoned_async

    reached = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reached.append((str(u.exc_value), type(u.object).__name__)))

    async def abandoned():
        pass

    coro = abandoned()
    coro.close()  # (never run: no warning of it)
    quiet_abandoned_async()
    hook = sys.unraisablehook
    quiet_abandoned_async()  # (twice: one hook, not a chain of them)
    assert sys.unraisablehook is hook

    def unraisable(exc, obj):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None, object=obj)

    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed"), coro))
    assert reached == []
    sys.unraisablehook(unraisable(RuntimeError("something else"), coro))
    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed"), object()))
    assert reached == [("something else", "coroutine"), ("Event loop is closed", "object")]

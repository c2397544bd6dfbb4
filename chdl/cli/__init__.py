"""The ``chdl`` command line: one click group whose subcommands are imported only when run.

Lazy loading keeps ``chdl --help`` instant (no torch import) and keeps one broken stage from taking
the whole CLI down. Each stage owns one module under ``chdl/cli/``; this table is the only place that
lists them.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys
import warnings

import click

import chdl

def quiet_abandoned_async() -> None:
    """After an interrupt: zarr's store calls that it cut short are coroutines never awaited, and Python would warn
    about each at exit, and asyncio would log their tasks and futures ("Task was destroyed but it is pending!",
    "Future exception was never retrieved") when they are collected (seen after Ctrl-C in curate and SIGTERM in
    import), and a coroutine collected after its loop closed prints "Exception ignored in: <coroutine ...>
    RuntimeError: Event loop is closed" at exit (CI, a Ctrl-C of curate --overwrite: 5 tracebacks after its one
    line). The work they were doing is the work a rerun redoes: nothing to report."""
    import inspect

    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    previous = sys.unraisablehook
    if getattr(previous, "_chdl_quiet", False):
        return

    def hook(unraisable) -> None:
        if (inspect.iscoroutine(unraisable.object) and isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            return
        previous(unraisable)

    hook._chdl_quiet = True
    sys.unraisablehook = hook


def object_store_error(e: BaseException) -> str | None:
    """One line for an object store's connection or credential failure (botocore's, through s3fs and zarr: a
    missing endpoint, no or wrong credentials, access refused), found anywhere in ``e``'s chain; None for any
    other error (and for a ClickException: the one line a command made of it, e.g. curate's, which says what to
    rerun). It names the URLs of the command line, which say which store it was."""
    if isinstance(e, click.ClickException):
        return None
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        module = type(e).__module__ or ""
        if module.startswith(("botocore", "aiobotocore", "s3fs")) or (
                isinstance(e, PermissionError) and any("://" in a for a in sys.argv[1:])):
            urls = ", ".join(a for a in sys.argv[1:] if "://" in a and not a.startswith(("http://", "https://")))
            what = (str(e).splitlines() or [type(e).__name__])[0]
            return f"{urls or 'object store'}: the object store cannot be used ({type(e).__name__}: {what})"
        e = e.__cause__ or e.__context__
    return None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def catch_stop_signals(handler=_raise_interrupt, sigint: bool = False) -> dict:
    """Install ``handler`` for SIGTERM (a scheduler's or `kill`'s stop) and SIGHUP (the terminal closed; one that
    is ignored, under nohup, stays ignored), and with ``sigint`` for SIGINT unless whoever started us changed
    Python's default (an ignored Ctrl-C stays ignored). Returns the replaced handlers, for
    :func:`restore_signals`. ValueError outside the main thread (Python sets handlers there only)."""
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, handler)
    if sigint and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, handler)
    return previous


def restore_signals(previous: dict | None) -> None:
    """Put back the handlers :func:`catch_stop_signals` replaced."""
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)


# command name -> (module, attribute, one-line help shown by `chdl --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "cameras": ("chdl.cli.acquire", "cameras", "List the cameras every configured GenTL producer sees."),
    "capture": ("chdl.cli.acquire", "capture", "Capture lane passes from a camera (or replay a recording) into a raw recording."),
    "simulate": ("chdl.cli.simulate", "simulate", "Render simulated dicing-lane recordings with ground-truth fault labels."),
    "curate": ("chdl.cli.curate", "curate", "QC, reconstruct and pack raw recordings into a curated zarr dataset."),
    "import": ("chdl.cli.importers", "import_", "Import public benchmarks (Moving MNIST, WeatherBench) and video files into the dataset format (or videos as raw recordings)."),
    "info": ("chdl.cli.info", "info", "Summarise a curated dataset (shape, splits, QC counts, provenance)."),
    "verify": ("chdl.cli.info", "verify", "Check every shard file of a curated dataset against its recorded checksum."),
    "model-info": ("chdl.cli.model", "model_info", "Print parameter counts and FLOPs of the model presets."),
    "train": ("chdl.cli.train", "train", "Train DIFFUMA or a baseline on a curated dataset."),
    "eval": ("chdl.cli.train", "eval_", "Evaluate a checkpoint: MSE, MAE, SSIM, PSNR overall and per frame."),
    "predict": ("chdl.cli.train", "predict", "Predict future frames from a checkpoint: PNGs, GIF and zarr."),
    "monitor": ("chdl.cli.monitor", "monitor", "Capture while predicting each frame: process-anomaly alerts beside the recording."),
    "monitor-eval": ("chdl.cli.monitor", "monitor_eval", "Score monitor methods on labelled recordings: AUROC, recall, latency, false alarms."),
    "monitor-fit-scorer": ("chdl.cli.monitor", "monitor_fit_scorer", "Fit a learned frame scorer for chdl monitor on clean recordings."),
    "dashboard": ("chdl.cli.dashboard", "dashboard", "Serve the live dashboard of a monitor folder (frames, scores, alerts) on a local web page."),
    "bench": ("chdl.cli.bench", "bench", "Train and compare DIFFUMA with the paper's baselines under one budget."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        command = getattr(importlib.import_module(module), attr)
        command.name = name
        return command

    def invoke(self, ctx: click.Context):
        """Run the subcommand; a Ctrl-C it does not handle itself (curate, train, capture, monitor and simulate
        say what they kept) ends with one line and exit status 130, the shell's convention for SIGINT, instead of
        click's "Aborted!" and status 1. The commands that get here write their outputs whole at the end (eval,
        monitor-fit-scorer), into temporary folders removed on the way out (predict) or remove what they began
        (import), so rerunning is all it takes; bench and a second Ctrl-C in train keep what they had finished
        (--resume)."""
        # SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C does, so a command that cleans up on Ctrl-C does on
        # them too (an import killed so left a half-written dataset and exit 143 without a word). Commands with
        # handlers of their own (curate, train, capture, monitor, the dashboard's server) install them over these.
        try:
            previous = catch_stop_signals()
        except ValueError:  # not the main thread: signals cannot be set
            previous = None
        try:
            return super().invoke(ctx)
        except Exception as e:
            # an error exit abandons zarr's store calls in flight too (a full disk while a dataset's layout is written:
            # "Future exception was never retrieved" and a traceback after the one error line, in CI ~1 run in 30)
            quiet_abandoned_async()
            if (line := object_store_error(e)) is None:
                raise
            click.echo(f"Error: {line}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            quiet_abandoned_async()
            name = ctx.invoked_subcommand or ""
            hint = {"bench": "rerun with --resume to continue",  # (setup was cut short: no step has run)
                    "train": ("rerun with --resume if its --out folder holds checkpoints/last.pt, else the same "
                              "command")
                    }.get(name, "rerun the same command")
            click.echo(f"interrupted: chdl {name} stopped before it finished ({hint})", err=True)
            sys.exit(130)
        finally:
            restore_signals(previous)

    def main(self, *args, **kwargs):
        """click's main, with progress bars thinned out when standard error is not a terminal, and a standard output
        that cannot be written (``> /dev/full``, a full disk) as one line
        naming it, exit 1, instead of a 30-line traceback (the work done stays done: a capture's recording is
        complete). A closed pipe (``| head``) stays click's: silent, exit 1."""
        if not sys.stderr.isatty():  # a log file: a progress update every 30 s, not ten a second on one \r-joined
            os.environ.setdefault("TQDM_MININTERVAL", "30")  # line (tqdm reads it when imported; the user's wins)
        try:
            return super().main(*args, **kwargs)
        except OSError as e:
            if e.errno == errno.EPIPE or not _stdout_fails(e):
                raise
            click.echo(f"Error: stdout: {e.strerror or e}", err=True)
            sys.exit(1)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _stdout_fails(e: OSError) -> bool:
    """Whether ``e`` was raised writing to standard output (click.echo to it, or flushing it); if so standard output
    is pointed at /dev/null, so that the interpreter's flush at exit does not fail (and print) again."""
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    target = tb.tb_frame.f_locals.get("file") if tb.tb_frame.f_code.co_name == "echo" else None
    if target not in (sys.stdout, getattr(sys.stdout, "buffer", None)):
        try:
            sys.stdout.flush()
            return False
        except OSError:
            pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return True


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(chdl.__version__, prog_name="chdl")
def main() -> None:
    """chdl: capture, curate and predict wafer dicing-lane video (DIFFUMA)."""


def _exit_with(status: int):
    """A signal handler that flushes what the command printed and ends the process at once with ``status``."""
    def handler(signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # (closed, or the signal came in the middle of a flush)
                pass
        os._exit(status)
    return handler


def run() -> None:
    """The program (the ``chdl`` console script, ``python -m chdl``): :func:`main`, and once a command has exited, a
    Ctrl-C, SIGTERM or SIGHUP while the interpreter shuts down ends it at once and quietly, with the command's own
    exit status. Python joins worker threads and tears torch down at exit (up to ~2 s after train's last line): a
    signal there printed "Exception ignored in: <module 'threading'>" and a traceback after an interrupted command's
    one line (GNU ``timeout`` sends its signal to the command and again to its process group; a user presses Ctrl-C
    twice), or killed a finished one with a raw signal status. What the command wrote is complete (or, after an
    interrupt, resumable) already; the threads still running are what a rerun redoes."""
    try:
        main()
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # (under nohup SIGHUP stays ignored)
                signal.signal(sig, _exit_with(status))
        raise

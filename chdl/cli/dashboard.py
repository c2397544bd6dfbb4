"""``chdl dashboard MONITOR_DIR``: serve the live dashboard of a running or finished monitor folder."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import click

from chdl.cli.options import LocalPath


def _token(token: str | None, token_file: Path | None) -> str | None:
    if token is not None and token_file is not None:
        raise click.ClickException("give --token or --token-file, not both")
    if token_file is None:
        return token
    try:
        text = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{token_file}: cannot read the token ({e})") from None
    if not text:
        raise click.ClickException(f"{token_file}: the token file is empty")
    return text


@click.command("dashboard")
@click.argument("monitor_dir", type=LocalPath(path_type=Path, file_okay=True))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but localhost/127.0.0.1/::1 needs --token or --token-file.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port; 0 picks a free one (the URL printed says which).")
@click.option("--token", default=None,
              help="Require this token on every request (?token=... in the URL). Visible in the process "
                   "list: prefer --token-file.")
@click.option("--token-file", type=LocalPath(path_type=Path, dir_okay=False), default=None,
              help="Read the token from this file (surrounding whitespace stripped).")
def dashboard(monitor_dir: Path, host: str, port: int, token: str | None, token_file: Path | None) -> None:
    """Serve the dashboard of MONITOR_DIR (an OUT/<run-id>.monitor folder of `chdl monitor`): live frame,
    prediction, error map, score timeline and alerts, updated as the monitor writes them. Runs until
    Ctrl-C."""
    from chdl.monitor.dashboard import (DashboardConfigError, MonitorFolderError, read_status,
                                        serve_in_background)

    token = _token(token, token_file)
    # a file the server will read that this user may not (another user's, on a shared server): it served 500s and
    # printed tracebacks for every request
    for name in ("scores.jsonl", "events.jsonl"):
        if (monitor_dir / name).exists() and not os.access(monitor_dir / name, os.R_OK):
            raise click.ClickException(f"{monitor_dir / name}: this user may not read it (permissions; another "
                                       "user's monitor folder?): give read access")
    try:
        read_status(monitor_dir)
        handle = serve_in_background(monitor_dir, host=host, port=port, token=token)
    except (DashboardConfigError, MonitorFolderError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"dashboard of {monitor_dir} at {handle.url}  (Ctrl-C stops)")
    try:
        while handle.running and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        stop.set()
    finally:
        handle.stop()
    if not stop.is_set():
        raise click.ClickException(f"the dashboard server of {monitor_dir} stopped unexpectedly")
    click.echo("dashboard stopped", err=True)

"""The live dashboard (chdl.monitor.dashboard, `chdl dashboard`) over monitor folders written by a fixture
that plays a running `chdl monitor`, following the folder contract of docs/monitor.md exactly."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import shutil
import sys
from pathlib import Path

import httpx2
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from chdl.monitor.dashboard import (DashboardConfigError, FolderFollower, MonitorFolderError, create_app, is_loopback,
                                    read_status, serve_in_background)

W, H = 80, 60


def png_bytes(seed: int, width: int = W, height: int = H) -> bytes:
    """A textured 8-bit gray PNG (never blank): a gradient plus seeded noise."""
    rng = np.random.default_rng(seed)
    img = (np.add.outer(np.arange(height), np.arange(width)) * 2 + rng.integers(0, 60, (height, width))) % 256
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class FakeMonitor:
    """Writes a monitor folder as `chdl monitor` does (docs/monitor.md): status.json replaced atomically,
    scores/events appended and flushed one line at a time, live/*.png replaced atomically, one snapshot
    per event."""

    def __init__(self, root: Path, run_id: str = "run-1"):
        self.dir = root / f"{run_id}.monitor"
        (self.dir / "live").mkdir(parents=True)
        (self.dir / "snapshots").mkdir()
        self.status = {"format": "chdl.monitor/1", "run_id": run_id, "state": "running",
                       "predictor": "constant-motion", "t_in": 4, "frames_captured": 0, "frames_scored": 0,
                       "frames_skipped": 0, "events": 0, "width": W, "height": H,
                       "updated_utc": "2026-11-30T10:00:00Z"}
        self.n_events = 0
        self.write_status()

    def _replace(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def write_status(self, **changes) -> None:
        self.status.update(changes)
        self._replace(self.dir / "status.json", json.dumps(self.status).encode())

    def append(self, name: str, text: str) -> None:
        with open(self.dir / name, "a") as f:
            f.write(text)
            f.flush()

    def score(self, frame: int, score: float = 0.5, *, lane: int = 0, alert: bool = False,
              acquisition: str | None = None) -> dict:
        record = {"frame": frame, "lane": lane, "position": frame % 10, "score": score, "threshold": 3.0,
                  "alert": alert, "acquisition": acquisition, "latency_ms": 41.5}
        self.append("scores.jsonl", json.dumps(record) + "\n")
        self._replace(self.dir / "live" / "frame.png", png_bytes(frame))
        self._replace(self.dir / "live" / "prediction.png", png_bytes(frame + 1000))
        self._replace(self.dir / "live" / "error.png", png_bytes(frame + 2000))
        self.write_status(frames_captured=frame + 1, frames_scored=self.status["frames_scored"] + 1)
        return record

    def event_line(self, frame: int, lane: int = 0, kind: str = "process") -> str:
        snapshot = f"snapshots/{frame:06d}.png"
        self._replace(self.dir / snapshot, png_bytes(frame + 3000, width=3 * W))
        record = {"event": self.n_events, "kind": kind, "frame": frame, "lane": lane, "position": frame % 10,
                  "score": 7.25, "threshold": 3.0, "box": [10, 12, 30, 40],
                  "reason": "prediction error 7.2x the running baseline", "snapshot": snapshot,
                  "raised_utc": "2026-11-30T10:00:01.250+00:00"}
        self.n_events += 1
        return json.dumps(record) + "\n"

    def event(self, frame: int, lane: int = 0, kind: str = "process") -> None:
        self.append("events.jsonl", self.event_line(frame, lane, kind))
        self.write_status(events=self.n_events)


@pytest.fixture
def monitor(tmp_path) -> FakeMonitor:
    m = FakeMonitor(tmp_path)
    for frame in range(5):
        m.score(frame, 0.4 + 0.1 * frame)
    return m


# --------------------------------------------------------------------------------------------------- API


def test_status_scores_and_events_leave_a_partial_last_line_out(monitor):
    client = TestClient(create_app(monitor.dir), base_url="http://127.0.0.1")
    assert client.get("/api/status").json() == monitor.status
    assert [r["frame"] for r in client.get("/api/scores").json()] == [0, 1, 2, 3, 4]
    assert [r["frame"] for r in client.get("/api/scores?last=2").json()] == [3, 4]
    assert client.get("/api/events").json() == []

    line = monitor.event_line(123, lane=2)
    monitor.append("events.jsonl", line[:25])  # the monitor is mid-write
    monitor.append("scores.jsonl", '{"frame": 5, "lane": 0, "sco')
    assert client.get("/api/events").json() == []
    assert len(client.get("/api/scores").json()) == 5
    monitor.append("events.jsonl", line[25:])
    events = client.get("/api/events").json()
    assert [(e["event"], e["frame"], e["lane"]) for e in events] == [(0, 123, 2)]


def test_a_long_run_is_read_from_its_end(monitor):
    """A new stream sent an 8-hour run's whole scores.jsonl (21 MB; a new page was current after ~34 s), though the
    page keeps the last 600; now it starts at the last STREAM_SCORES scores, and every event."""
    from chdl.monitor.dashboard import STREAM_SCORES, FolderFollower

    for frame in range(5, STREAM_SCORES + 300):
        monitor.append("scores.jsonl", json.dumps({"frame": frame, "lane": 0, "score": 0.5}) + "\n")
    monitor.event(7)
    sent = {name: data for name, data in [(m.event, m.data) for m in FolderFollower(monitor.dir).poll()]}
    assert [r["frame"] for r in sent["scores"]] == list(range(300, STREAM_SCORES + 300))
    assert [e["frame"] for e in sent["events"]] == [7]
    client = TestClient(create_app(monitor.dir), base_url="http://127.0.0.1")
    assert [r["frame"] for r in client.get("/api/scores?last=3").json()] == [STREAM_SCORES + 297, STREAM_SCORES + 298,
                                                                              STREAM_SCORES + 299]


def test_a_folder_written_again_by_another_run_restarts_the_stream(monitor, tmp_path):
    """rm -rf the folder and a new run written there, under an open page: it listed the old run's alerts under the
    new run's name (event numbers restart, and the page drops numbers it has seen) and never the new ones; a
    new file longer than the old read position was read from mid-line. Now one "reset", then the new run."""
    import shutil

    from chdl.monitor.dashboard import FolderFollower

    monitor.event(3)
    follower = FolderFollower(monitor.dir)
    assert [e for e, _ in [(m.event, m.data) for m in follower.poll()]][:3] == ["status", "events", "scores"]
    shutil.rmtree(monitor.dir)
    again = FakeMonitor(tmp_path)  # the same folder, another run
    again.write_status(run_id="run-2")
    for frame in range(40):
        again.score(frame)
    again.event(25)
    reset = follower.poll()
    assert [(m.event, m.data["reason"]) for m in reset] == [("reset", "the folder now holds run 'run-2'")]
    sent = {m.event: m.data for m in follower.poll()}
    assert sent["status"]["run_id"] == "run-2" and [e["frame"] for e in sent["events"]] == [25]
    assert [r["frame"] for r in sent["scores"]] == list(range(40))


def test_head_is_answered_wherever_get_is(monitor):
    """HEAD / and HEAD /live/frame.png were 405 (uptime checkers use HEAD)."""
    client = TestClient(create_app(monitor.dir), base_url="http://127.0.0.1")
    for path in ("/", "/api/status", "/live/frame.png"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] != "0", path
    assert client.head("/live/nothing.png").status_code == 404


def test_live_images_and_snapshots_are_served_as_written(monitor):
    client = TestClient(create_app(monitor.dir), base_url="http://127.0.0.1")
    assert client.get("/snapshots/000009.png").status_code == 404  # no such event yet
    monitor.event(9)
    for url, path in [("/live/frame.png", "live/frame.png"), ("/live/error.png", "live/error.png"),
                      ("/live/prediction.png", "live/prediction.png"), ("/snapshots/000009.png", "snapshots/000009.png")]:
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", url
        assert r.content == (monitor.dir / path).read_bytes(), url
    assert client.get("/live/frame.png").headers["cache-control"] == "no-store"
    page = client.get("/")
    assert page.status_code == 200 and 'id="alerts"' in page.text


def test_only_the_contract_names_are_served(monitor, tmp_path):
    (monitor.dir / "secret.png").write_bytes(b"secret")
    (tmp_path / "outside.png").write_bytes(b"outside")
    client = TestClient(create_app(monitor.dir), base_url="http://127.0.0.1")
    for url in ["/live/status.json", "/live/..%2Fstatus.json", "/live/%2E%2E%2Fsecret.png", "/live/frame.png.tmp",
                "/snapshots/..%2F..%2Foutside.png", "/snapshots/..%2Fsecret.png", "/snapshots/12.png",
                "/snapshots/000001.png%2F..%2F..%2Fstatus.json", "/live/%2E%2E", "/snapshots/%2Fetc%2Fpasswd",
                "/status.json", "/scores.jsonl", "/static/../status.json", "/..%2Fstatus.json"]:
        r = client.get(url)
        assert r.status_code == 404, url
        assert b"secret" not in r.content and b"outside" not in r.content and b"chdl.monitor/1" not in r.content


def test_a_token_is_required_on_every_request(monitor):
    client = TestClient(create_app(monitor.dir, token="s3cret-Token"))
    for url in ["/", "/api/status", "/api/events", "/api/scores", "/api/stream", "/live/frame.png"]:
        assert client.get(url).status_code == 401, url
        assert client.get(url, params={"token": "s3cret-Tokem"}).status_code == 403, url
        assert client.get(url, headers={"X-Chdl-Token": "wrong"}).status_code == 403, url
    assert client.get("/api/status", params={"token": "s3cret-Token"}).json()["run_id"] == "run-1"
    assert client.get("/live/frame.png", headers={"Authorization": "Bearer s3cret-Token"}).status_code == 200
    assert client.get("/", headers={"X-Chdl-Token": "s3cret-Token"}).status_code == 200
    assert client.get("/api/status", params={"token": "s3cret-Tokenü"}).status_code == 403  # non-ASCII: no crash


def test_a_link_planted_in_the_folder_serves_nothing_outside_it(monitor, tmp_path):
    """snapshots/000999.png -> /etc/passwd and live -> another folder were served (200, the outside file's bytes)."""
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "frame.png").write_bytes(b"outside-frame")
    (secret / "passwd").write_bytes(b"root:x:0:0")
    (monitor.dir / "snapshots").mkdir(exist_ok=True)
    (monitor.dir / "snapshots" / "000999.png").symlink_to(secret / "passwd")
    shutil.rmtree(monitor.dir / "live")
    (monitor.dir / "live").symlink_to(secret)
    (monitor.dir / "events.jsonl").unlink(missing_ok=True)
    (tmp_path / "events.jsonl").write_text('{"leaked": 1}\n')
    (monitor.dir / "events.jsonl").symlink_to(tmp_path / "events.jsonl")
    client = TestClient(create_app(monitor.dir), base_url="http://127.0.0.1")
    for url in ["/snapshots/000999.png", "/live/frame.png", "/api/events"]:
        r = client.get(url)
        assert r.status_code == 404 and b"outside" not in r.content and b"root:" not in r.content, url
    follower = FolderFollower(monitor.dir)
    assert all(e.event in ("status", "scores") for e in follower.poll())  # no events, no live from outside
    inside = monitor.dir / "snapshots" / "000005.png"  # a link that stays inside the folder is served
    (monitor.dir / "snapshots" / "000001.png").write_bytes(b"\x89PNG-inside")
    inside.symlink_to(monitor.dir / "snapshots" / "000001.png")
    assert client.get("/snapshots/000005.png").content == b"\x89PNG-inside"


def test_without_a_token_only_requests_naming_the_loopback_are_served(monitor):
    """A page on attacker.example resolving its name to 127.0.0.1 (DNS rebinding) read every event: the Host
    header was not checked."""
    app = create_app(monitor.dir)
    for host in ["attacker.example", "attacker.example:8790", "192.168.1.5", "evil.localhost.example"]:
        r = TestClient(app, base_url=f"http://{host}").get("/api/events")
        assert r.status_code == 400 and "not this machine's loopback" in r.text, host
    client = TestClient(app, base_url="http://127.0.0.1:8790")
    r = client.get("/api/events", headers={"Host": "127.0.0.1:8790, evil.example"})  # (split at the last colon: 200)
    assert r.status_code == 400
    for host in ["127.0.0.1:1@evil.example", "[::1]x.example", "[::1]:80x", "localhost:"]:  # (the port was not read)
        assert client.get("/api/events", headers={"Host": host}).status_code == 400, host
    for host in ["127.0.0.1:8790", "localhost", "localhost:1", "[::1]:8790", "127.0.0.2"]:
        assert TestClient(app, base_url=f"http://{host}").get("/api/status").status_code == 200, host
    # with a token, the token is the gate (a non-loopback bind is reached by whatever name the network gives)
    tokened = TestClient(create_app(monitor.dir, token="s3cret-Token"), base_url="http://dashboard.fab.example")
    assert tokened.get("/api/status", params={"token": "s3cret-Token"}).status_code == 200


@pytest.mark.parametrize("token", ["   ", "x", "short", "café-token-long", "has space inside"])
def test_weak_or_non_ascii_tokens_are_refused(monitor, token):
    """"   " and "x" were accepted for a non-loopback bind; a non-ASCII token matched in the URL only (headers are
    Latin-1)."""
    with pytest.raises(DashboardConfigError, match="at least 8 printable ASCII characters without spaces"):
        create_app(monitor.dir, token=token)


def test_a_made_up_last_event_id_starts_the_stream_from_the_beginning(monitor, capsys):
    """Last-Event-ID 99999999.99999999 (or 5.5, mid-line) printed "shrank" / "not a JSON object" warnings about
    intact files and sent nothing."""
    monitor.event(7)
    for made_up in ["99999999.99999999", "5.5", "0.3"]:
        f = FolderFollower(monitor.dir, made_up)
        got = {e.event: e.data for e in f.poll()}
        assert [r["frame"] for r in got["scores"]] == [0, 1, 2, 3, 4] and len(got["events"]) == 1, made_up
    genuine = FolderFollower(monitor.dir)
    cursor = genuine.poll()[-1].id
    assert not any(e.event in ("scores", "events") for e in FolderFollower(monitor.dir, cursor).poll())
    assert "shrank" not in capsys.readouterr().err


def test_non_loopback_needs_a_token_and_folders_are_checked(tmp_path):
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.20", "::", "example.org"]))
    m = FakeMonitor(tmp_path)
    with pytest.raises(DashboardConfigError, match="0.0.0.0 .* needs a token"):
        serve_in_background(m.dir, host="0.0.0.0", port=0)  # refused before anything is bound
    with pytest.raises(DashboardConfigError, match="empty"):
        create_app(m.dir, token="")
    with pytest.raises(MonitorFolderError, match="nope: no such folder"):
        create_app(tmp_path / "nope")
    with pytest.raises(MonitorFolderError, match=r"not a monitor folder \(no status.json\)"):
        read_status(tmp_path)
    (m.dir / "status.json").write_text('{"format": "other/2"}')
    with pytest.raises(MonitorFolderError, match="format: expected 'chdl.monitor/1', got 'other/2'"):
        read_status(m.dir)


def test_serves_on_ipv6_loopback(monitor):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with serve_in_background(monitor.dir, host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}/"
        assert httpx2.get(server.url + "api/status", timeout=10).json()["run_id"] == "run-1"


def sse_messages(response):
    """(event, data, id) of each server-sent event of a streaming httpx2 response."""
    event, data, id_ = None, [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("id: "):
            id_ = line[4:]
        elif line == "" and event is not None:
            yield event, json.loads("\n".join(data)), id_
            event, data, id_ = None, [], None


def test_the_stream_delivers_new_records_once_complete_and_resumes(monitor):
    with serve_in_background(monitor.dir) as server, httpx2.Client(timeout=10) as client:
        assert server.url == f"http://127.0.0.1:{server.port}/" and server.port > 0
        with client.stream("GET", server.url + "api/stream") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            messages = sse_messages(r)
            first = {}
            while set(first) != {"status", "scores", "live"}:
                event, data, last_id = next(messages)
                first[event] = data
            assert first["status"] == monitor.status and [s["frame"] for s in first["scores"]] == [0, 1, 2, 3, 4]

            line = monitor.event_line(123, lane=1)
            monitor.append("events.jsonl", line[:30])  # partial: must not be sent
            monitor.score(5, 0.9)
            seen = []
            while "scores" not in seen:
                seen.append(next(messages)[0])
            assert "events" not in seen, seen
            monitor.append("events.jsonl", line[30:])
            event, data, last_id = next(m for m in messages if m[0] == "events")
            assert [(e["frame"], e["lane"], e["snapshot"]) for e in data] == [(123, 1, "snapshots/000123.png")]

        # A reconnecting EventSource sends the last id: it gets only what came after.
        monitor.score(6, 1.1)
        with client.stream("GET", server.url + "api/stream", headers={"Last-Event-ID": last_id}) as r:
            messages = sse_messages(r)
            got = {}
            while "scores" not in got:
                event, data, _ = next(messages)
                got[event] = data
            assert [s["frame"] for s in got["scores"]] == [6] and "events" not in got
            server.stop()  # ends the open stream too
        assert not server.running


def test_a_stopping_server_delivers_the_last_state_first(monitor):
    """`chdl monitor --serve` writes the final status and stops its server at once: an open page stayed on
    "running" (the stream was closed before its next look at the folder)."""
    import threading

    with serve_in_background(monitor.dir) as server, httpx2.Client(timeout=10) as client:
        with client.stream("GET", server.url + "api/stream") as r:
            messages = sse_messages(r)
            assert next(m for m in messages if m[0] == "status")[1]["state"] == "running"
            monitor.write_status(state="finished")
            threading.Thread(target=server.stop).start()  # at once, as the monitor does
            states = [data["state"] for event, data, _ in messages if event == "status"]
    assert states[-1:] == ["finished"], states


# --------------------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "chdl", "dashboard", *map(str, args)], capture_output=True,
                          text=True, timeout=60)


def test_cli_refuses_a_non_loopback_host_without_a_token(monitor):
    r = run_cli(monitor.dir, "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["Error: serving on 0.0.0.0 (not loopback) needs a token "
                                             "(--token or --token-file)"]


def test_cli_one_line_errors_name_the_folder_or_file(tmp_path, monitor):
    empty_token = tmp_path / "token"
    empty_token.write_text("\n")
    a_file = tmp_path / "events.jsonl"
    a_file.write_text("")
    cases = [((tmp_path / "nope",), f"{tmp_path / 'nope'}: no such folder"),
             ((a_file,), f"{a_file}: is a file, not a monitor folder"),
             ((tmp_path,), f"{tmp_path}: not a monitor folder (no status.json)"),
             ((monitor.dir, "--token-file", empty_token), f"{empty_token}: the token file is empty"),
             ((monitor.dir, "--token-file", tmp_path / "none"), f"{tmp_path / 'none'}: cannot read the token"),
             ((monitor.dir, "--token", "a", "--token-file", empty_token), "give --token or --token-file, not both")]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases.append(((monitor.dir, "--port", port), f"cannot listen on 127.0.0.1:{port}: Address already in use"))
    with busy:
        for args, message in cases:
            r = run_cli(*args) if "--port" in args else run_cli(*args, "--port", "0")
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1 and len(lines) == 1 and message in lines[0], (args, r.stderr)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_ctrl_c_or_sigterm(monitor, tmp_path, stop_signal):
    token_file = tmp_path / "token"
    token_file.write_text("tok-12345\n")
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "dashboard", str(monitor.dir), "--port", "0",
                             "--token-file", str(token_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no URL printed"
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/?token=tok-12345"), line
        status = httpx2.get(url.replace("/?", "/api/status?"), timeout=10)
        assert status.status_code == 200 and status.json()["run_id"] == "run-1"
        assert httpx2.get(url.split("?")[0] + "api/status", timeout=10).status_code == 401
        with httpx2.stream("GET", url.replace("/?", "/api/stream?"), timeout=10) as stream:
            assert next(stream.iter_lines()) == "event: status"
            proc.send_signal(stop_signal)  # while a stream is open: it ends it
            assert proc.wait(timeout=30) == 0
        assert "dashboard stopped" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------------- browser


def test_alert_appears_live_in_headless_chromium(monitor, tmp_path, chromium):
    """A real browser on loopback: the page opens on a running monitor, an alert is appended while it is
    open, and the alert element, its snapshot thumbnail and the new live frame appear; screenshot saved."""
    monitor.score(5, float("nan"))  # Python's json writes NaN; the page shows "-" and leaves it out of the plot
    with serve_in_background(monitor.dir, token="tok-77777") as server:
        page = chromium.new_page(viewport={"width": 1280, "height": 800}, timezone_id="UTC")
        requests, errors = [], []
        page.on("request", lambda req: requests.append(req.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(server.url)
        page.wait_for_selector('#state[data-state="running"]', timeout=10_000)
        page.wait_for_function(f"document.getElementById('live-frame').naturalWidth === {W}", timeout=10_000)
        assert page.text_content("#captured") == "6" and page.text_content("#scored") == "6"
        assert "score - (threshold 3.000)" in page.text_content("#latest")
        assert page.query_selector("li.alert") is None
        n_points = page.eval_on_selector("#timeline polyline.score", "e => e.getAttribute('points')")
        assert len(n_points.split()) == 5

        old_src = page.get_attribute("#live-frame", "src")
        monitor.score(123, 7.25, alert=True)
        odd = json.loads(monitor.event_line(122, lane=1))  # a box that is not a list stopped every later alert
        monitor.append("events.jsonl", json.dumps({**odd, "box": "notalist"}) + "\n")
        monitor.event(123, lane=0)
        page.wait_for_selector('li.alert[data-frame="122"][data-lane="1"]', timeout=10_000)
        alert = page.wait_for_selector('li.alert[data-frame="123"][data-lane="0"]', timeout=10_000)
        assert alert.get_attribute("data-kind") == "process" and "frame 123" in alert.text_content()
        assert "10:00:01" in alert.text_content()  # when it was raised, in the page's zone (UTC here)
        page.wait_for_function("[...document.querySelectorAll('li.alert img')].every(i => i.naturalWidth === 3 * 80)",
                               timeout=10_000)
        page.wait_for_function(f"document.getElementById('live-frame').src !== {json.dumps(old_src)}",
                               timeout=10_000)
        page.wait_for_function("document.getElementById('scored').textContent === '7'", timeout=10_000)
        assert page.text_content("#alert-count") == "2"
        assert page.query_selector_all("#timeline circle.alerting") and page.query_selector("#timeline line.event")
        shot = page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    assert not errors, errors
    origin = f"http://127.0.0.1:{server.port}/"
    assert requests and all(u.startswith(origin) and "token=tok-77777" in u for u in requests), requests
    img = Image.open(io.BytesIO(shot))
    assert img.format == "PNG" and img.size[0] == 1280 and img.size[1] >= 800
    pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not blank
    assert (tmp_path / "dashboard.png").read_bytes() == shot


def test_a_page_lists_the_newest_alerts_and_starts_over_for_a_new_run(monitor, tmp_path, chromium):
    """2,000 alerts made 46,600 DOM nodes and fetched 1,999 snapshots at once; a folder written again by another run
    left the old run's alerts on the page. Now the newest 200 are listed (the count says all), thumbnails load
    lazily, and the page reloads itself onto the new run."""
    import shutil

    for k in range(250):
        monitor.append("events.jsonl", monitor.event_line(1000 + k))
    monitor.write_status(events=250)
    with serve_in_background(monitor.dir) as server:
        page = chromium.new_page()
        page.goto(server.url)
        page.wait_for_function("document.getElementById('alert-count').textContent === '250 (newest 200 listed)'",
                               timeout=10_000)
        assert len(page.query_selector_all("li.alert")) == 200
        assert page.query_selector("li.alert").get_attribute("data-frame") == "1249"  # the newest first
        assert page.eval_on_selector("li.alert img", "i => i.loading") == "lazy"
        shutil.rmtree(monitor.dir)
        again = FakeMonitor(tmp_path)
        again.write_status(run_id="run-2")
        again.event(7)
        page.wait_for_function("document.getElementById('run-id').textContent === 'run-2' && "
                               "document.getElementById('alert-count').textContent === '1'", timeout=15_000)
        assert [li.get_attribute("data-frame") for li in page.query_selector_all("li.alert")] == ["7"]


def test_a_monitor_that_stopped_updating_is_judged_by_this_pages_own_clock(monitor, chromium):
    """The page judged "no update for N s" by this browser's Date.now() minus the monitor's updated_utc: a viewer on
    another PC whose clock ran 30 s ahead saw every running monitor as stopped, one behind never saw a dead one.
    Now it counts from when it saw updated_utc change. Here the browser's clock is days ahead of the status."""
    import time

    with serve_in_background(monitor.dir, token="tok-77777") as server:
        page = chromium.new_page()
        page.clock.install()  # (the page's timers and clocks advance only as the test says)
        page.goto(server.url)
        page.wait_for_selector('#state[data-state="running"]', timeout=10_000)
        page.clock.run_for(10_000)  # two staleness checks: 10 s since this page saw the status change
        assert page.text_content("#state") == "running"
        page.clock.run_for(30_000)
        assert page.text_content("#state").startswith("running? (no update for 40 s")
        monitor.write_status(updated_utc="2026-11-30T10:00:45Z")  # the monitor is alive after all
        deadline = time.monotonic() + 10
        while page.text_content("#state") != "running" and time.monotonic() < deadline:
            page.clock.run_for(500)
            time.sleep(0.1)
        page.clock.run_for(10_000)
        assert page.text_content("#state") == "running"


def test_cli_refuses_a_monitor_folder_whose_files_this_user_may_not_read(monitor, monkeypatch):
    """Another user's scores.jsonl (mode 600): the server started, then answered 500 with tracebacks on the console
    (emulated: os.access says no, as it does for such a file; root may read anything)."""
    import os

    from click.testing import CliRunner

    from chdl.cli import main

    private = monitor.dir / "scores.jsonl"
    private.touch()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(private) else real(p, mode, **kw))
    r = CliRunner().invoke(main, ["dashboard", str(monitor.dir), "--port", "0"])
    assert r.exit_code == 1 and r.output.strip() == (f"Error: {private}: this user may not read it (permissions; "
                                                     "another user's monitor folder?): give read access")

"""Two minutes of `chdl monitor` against the viky GenTL test producer at 5 fps: are frames dropped?

    python tools/monitor_viky.py [--seconds 120] [--out NEW_OR_EMPTY_FOLDER]

Runs ``chdl monitor --camera viky0`` (the real GenTL path, the genicam wheel's viky.cti) for ``--seconds``
at 5 fps, 320x240, 10 positions per lane, then checks the recording: every position has a frame, no frame
dropped or incomplete, the recording complete and readable like a plain capture (same manifest keys and
index fields), the capture's pace kept (no free-run frame skipped, no gap of two frame intervals), and how many
frames the scorer scored and skipped. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from cli_args import more_than, new_or_empty_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=more_than(0), default=120.0)
    ap.add_argument("--out", type=new_or_empty_dir, default=None,
                    help="a new or empty folder for the recording (default: a new temporary one, kept); a folder "
                         "holding anything is refused (this tool deleted it)")
    args = ap.parse_args()
    import tempfile

    from acquisition.raw import Recording

    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="monitor-viky-"))
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = args.out / "cameras.yaml"
    cfg.write_text("producers: [viky]\ncameras:\n  viky0: {serial: \"0\"}\n")
    lanes = max(1, int(round(args.seconds * 5 / 10)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "chdl", "monitor", "--camera", "viky0", "--camera-config", cfg,
                           "--out", args.out / "raw", "--run-id", "viky", "--lanes", str(lanes), "--positions", "10",
                           "--fps", "5", "--width", "320", "--height", "240", "-q"], env=env, capture_output=True,
                          text=True)
    wall = time.monotonic() - t0
    print(proc.stdout.strip())
    if proc.returncode != 0:
        print(proc.stderr.strip()[-2000:])
        sys.exit(f"chdl monitor failed (exit {proc.returncode})")
    rec = Recording.open(args.out / "raw" / "viky")
    notes = rec.manifest["notes"]
    status = json.loads((args.out / "raw" / "viky.monitor" / "status.json").read_text())
    statuses = {s: sum(f.status == s for f in rec.frames) for s in ("ok", "incomplete", "dropped")}
    readable = all(rec.read(f).shape == (240, 320) for f in rec.frames if f.file)
    mon = args.out / "raw" / "viky.monitor"
    lat = sorted(r["latency_ms"] for r in map(json.loads, (mon / "scores.jsonl").read_text().splitlines())
                 if r.get("latency_ms") is not None)
    kinds = [json.loads(x)["kind"] for x in (mon / "events.jsonl").read_text().splitlines()]
    pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None)
    # the capture's own pace: a stalled writer thread fills the capture's queue, and free-run frames that arrive
    # while it waits are skipped (notes.skipped_frames), every position still getting a later frame
    t = [f.host_monotonic_ns / 1e9 for f in rec.frames]
    gaps = [b - a for a, b in zip(t, t[1:])]
    rate = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None
    print(json.dumps({"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "out": str(args.out),
                      "wall_s": round(wall, 1), "frames": len(rec.frames),
                      "expected": lanes * 10, "complete": rec.complete, "statuses": statuses,
                      "dropped_frames": notes.get("dropped_frames"), "incomplete_buffers": notes.get("incomplete_buffers"),
                      "skipped_frames": notes.get("skipped_frames"),
                      "frames_per_s": None if rate is None else round(rate, 3),
                      "longest_gap_s": round(max(gaps), 3) if gaps else None,
                      "readable": readable, "frames_scored": status["frames_scored"],
                      "frames_skipped": status["frames_skipped"], "events": status["events"],
                      "acquisition_events": kinds.count("acquisition"), "process_events": kinds.count("process"),
                      "scorer_latency_ms_p50": pct(0.5), "scorer_latency_ms_p99": pct(0.99),
                      "load_1min": round(os.getloadavg()[0], 2)}, indent=1))
    ok = rec.complete and len(rec.frames) == lanes * 10 and statuses["ok"] == len(rec.frames) \
        and not notes.get("dropped_frames") and readable
    kept_pace = not notes.get("skipped_frames") and (not gaps or max(gaps) < 2 / 5)
    print("zero dropped frames, recording complete" if ok else "FRAMES LOST OR RECORDING INCOMPLETE")
    print("the capture kept its 5 fps pace" if kept_pace else
          f"THE CAPTURE STALLED: {notes.get('skipped_frames')} free-run frames skipped, longest gap "
          f"{max(gaps, default=0):.2f} s")
    ok = ok and kept_pace
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

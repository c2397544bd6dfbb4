"""The optional Aravis backend against Aravis' fake GigE Vision camera, on 127.0.0.1 inside a private network
namespace (`unshare -rn`: loopback only, so GigE Vision discovery broadcasts reach nothing). Skipped unless
`unshare`, the fake camera (`aravis-tools`) and `libaravis-0.8` are installed; .ci/run installs them where it
can and then sets CHDL_REQUIRE_ARAVIS=1, which turns the skip into a failure (CI must exercise the backend)."""

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

FAKE = "arv-fake-gv-camera-0.8"


def _available() -> bool:
    if not (shutil.which("unshare") and shutil.which(FAKE) and ctypes.util.find_library("aravis-0.8")):
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


if os.environ.get("CHDL_REQUIRE_ARAVIS") == "1" and not _available():
    raise RuntimeError("CHDL_REQUIRE_ARAVIS=1 but unshare -rn, arv-fake-gv-camera-0.8 or libaravis-0.8 is missing")
pytestmark = pytest.mark.skipif(not _available(), reason="needs unshare -rn, aravis-tools and libaravis-0.8")


def test_fake_gige_camera_software_trigger_timestamps_and_16_bit_wrap(tmp_path):
    (tmp_path / "cameras.yaml").write_text("cameras:\n  arv0: {backend: aravis, address: 127.0.0.1}\n")
    (tmp_path / "check.py").write_text(textwrap.dedent(f"""
        import json
        from acquisition.raw import Recording
        r = Recording.open({str(tmp_path / 'raw' / 'run')!r})
        ids = [f.frame_id for f in r.frames]
        print(json.dumps({{"complete": r.complete, "n": len(r), "trigger": r.manifest["plan"]["trigger"],
                           "camera": r.manifest["camera"], "settings": r.manifest["settings"],
                           "drops": sum(f.dropped_before for f in r.frames), "status": sorted({{f.status for f in r.frames}}),
                           "decreases": [ids[i:i + 2] for i in range(len(ids) - 1) if ids[i + 1] < ids[i]],
                           "timestamps": all(f.device_timestamp_ns for f in r.frames)}}))
    """))
    chdl = f"{sys.executable} -m chdl capture --camera arv0 --camera-config {tmp_path / 'cameras.yaml'} --quiet"
    script = (f"ip link set lo up && {{ {FAKE} -i 127.0.0.1 -s FAKE01 & pid=$!; trap 'kill $pid' EXIT; sleep 0.5; "
              f"{chdl} --out {tmp_path / 'raw'} --run-id run --lanes 15 --positions 10 --fps 100 --width 320 --height 240 "
              f"--exposure-us 2000; echo RC=$?; "
              f"{chdl} --out {tmp_path / 'bad'} --width 4096; echo RC=$?; "
              f"{chdl} --out {tmp_path / 'raw'} --run-id left --positions 3 --fps 5 --width 320 --height 240; echo RC=$?; "
              f"{sys.executable} {tmp_path / 'check.py'}; }}")
    out = subprocess.run(["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert [line for line in out.stdout.splitlines() if line.startswith("RC=")] == ["RC=0", "RC=1", "RC=0"], \
        out.stdout + out.stderr
    # a capture that does not set the exposure records the one the camera has (left by the first: 2000 us)
    from acquisition.raw import Recording

    left = Recording.open(tmp_path / "raw" / "left")
    assert left.settings["exposure_us"] == 2000.0
    # software triggers come at --fps (the fake camera answers each trigger at once: at --fps 5 a frame came every
    # 40 ms, and the manifest said 5)
    stamps = [f.host_monotonic_ns for f in left.frames]
    assert stamps[-1] - stamps[0] >= 0.3e9, stamps  # two periods of 0.2 s, less the first frame's latency
    assert "Error: camera 'arv0' (Fake FAKE01): Width=4096 refused; valid range 1..2048" in out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["complete"] and r["n"] == 150 and r["status"] == ["ok"]
    assert r["trigger"] == "software"  # the fake camera has a software trigger: auto picks it
    assert (r["camera"]["backend"], r["camera"]["transport"], r["camera"]["serial"]) == ("aravis", "GEV", "FAKE01")
    assert r["settings"] == {"width": 320, "height": 240, "pixel_format": "Mono8", "fps": 100.0, "exposure_us": 2000.0,
                             "bit_depth": 8}
    assert r["timestamps"]  # GigE Vision device timestamps, unlike viky

    assert r["decreases"] == [[65535, 1]] and r["drops"] == 0  # the fake camera's 16-bit block ids wrap: no drop


"""The QC report: pictures of flagged frames made by the curate workers equal those read back from
the dataset (the path a resumed run takes for shards written before the interruption)."""

import re

from curation.config import CurateConfig
from curation.pipeline import curate
from curation.plan import build_plan
from curation.report import write_report
from curation_helpers import write_run

# a vibration fault, an illumination fault, a dropped frame, and a sequence with too many bad frames
FAULTS = {(0, 4): ("blur", 2.0), (1, 0): ("gain", 0.75), (3, 2): ("blur", 2.5), (3, 5): ("gain", 1.4),
          (3, 7): ("jitter", 6.0)}


def test_worker_thumbnails_equal_those_read_back(tmp_path):
    write_run(tmp_path / "raw" / "run-a", lanes=5, faults=FAULTS, drop={(2, 9)}, seed=4)
    cfg = CurateConfig(sequences_per_shard=2)
    r = curate(tmp_path / "raw", tmp_path / "out.zarr", cfg, workers=1, progress=False, log=lambda m: None)
    made_by_workers = r.report_html.read_text()
    read_back = tmp_path / "again.html"
    write_report(r.out, build_plan(tmp_path / "raw", cfg), cfg, read_back, tmp_path / "again.json")
    images = re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", made_by_workers)
    # four pictures per flagged frame at most: neighbours, original, reconstruction
    assert len(images) >= 3 * len(r.summary["flagged_frames"]) >= 3 * 6
    assert r.summary["splits"]["excluded"] == 1 and r.summary["flags"]["missing"] == 1
    assert "<span class=na>—</span>" in made_by_workers  # the dropped frame has no original
    assert read_back.read_text() == made_by_workers

"""``chdl monitor-eval``: how well the monitor finds labelled (simulated) process anomalies.

For each recording with ground truth (``truth/anomalies.jsonl``, see acquisition.process_anomalies; a
recording without that file but with ``truth/labels.jsonl`` counts as clean) every method scores every
frame through the same code as the live monitor (:class:`chdl.monitor.anomaly_score.MonitorPipeline`):

    frame-difference   the previous frame as prediction, whole-frame MSE (Liu et al.'s score, no blocks)
    copy-last          the previous frame as prediction, block-wise scorer
    constant-motion    the last frame moved by the measured stage motion, block-wise scorer
    <checkpoint>       a trained model (``--checkpoint``), block-wise scorer

Metrics (per method):

* ``auroc``: frame-level ROC AUC (scikit-learn) over scored frames (not the scorer's warm-up, which has no
  score yet); positives are the active frames of
  anomalies above the visibility floor, negatives the frames no anomaly is active in (frames of anomalies
  below the floor are left out);
* ``event_recall``: fraction of visible anomalies with an alert raised in their lane between their onset
  and one frame after their last active frame; ``recall_scorable``: the same over anomalies that begin
  with at least two frames of their pass before them (the monitor scores no earlier frame);
* ``latency_frames``: median / max frames from onset to that alert; ``within_one_frame``: fraction of
  detected anomalies alerted at the onset frame or the next;
* ``false_alarms_per_hour``: alerts raised where no anomaly (visible or not) is active, per hour of
  clean capture at 5 fps (clean frames / 5 / 3600);
* ``sweep``: event recall and false alarms per hour at other alert levels (:data:`SWEEP_LEVELS`, z_off =
  z_on / 2), the hysteresis replayed on each frame's z (:func:`replay_alerts`), so one scoring pass shows
  the whole trade-off; :func:`operating_point` picks the alert level from clean runs the same way
  (``tools/monitor_operating_point.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import textwrap
from pathlib import Path

import numpy as np

from acquisition import files
from chdl.monitor.anomaly_score import ConstantMotion, CopyLast, MonitorPipeline, ScorerConfig
from chdl.monitor.runtime import run_max_value, scoring_threads

FPS = 5.0  # CHDL's capture rate, for false alarms per hour (of the clean frames scored: docs/monitor.md)
METHODS = ("frame-difference", "copy-last", "constant-motion")
METRICS_FORMAT = "chdl.monitor-eval/1"  # metrics.json's "format"
SWEEP_LEVELS = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)  # alert levels (z_on) replayed in metrics.json's "sweep"


def method_setup(name: str, checkpoint=None, shape=None, scorer=None):
    """(predictor, ScorerConfig) of a method name (or a checkpoint path for the model); ``scorer``: a learned
    scorer file (chdl.monitor.learned_score) that gives the block scorer's frame score, checked here against
    the frame ``shape`` (H, W) when given. Raises ValueError (a ScorerFileError naming the file) for a file
    that cannot be used."""
    if scorer is not None:
        from chdl.monitor.learned_score import LearnedScorer

        learned = LearnedScorer.load(scorer)
        if shape is not None:
            learned.check_frames(tuple(shape[:2]))
        learned.check_checkpoint(checkpoint)
        predictor, cfg = method_setup(name, checkpoint, shape)
        return predictor, dataclasses.replace(cfg, scorer_file=str(scorer))
    if name == "frame-difference":
        return CopyLast(), ScorerConfig(mode="global")
    if name == "copy-last":
        return CopyLast(), ScorerConfig()
    if name == "constant-motion":
        return ConstantMotion(), ScorerConfig()
    from chdl.monitor.anomaly_score import CheckpointPredictor

    return CheckpointPredictor(checkpoint, shape), ScorerConfig()


def method_setups():
    """:func:`method_setup` memoised for one pass over recordings: a checkpoint or scorer file is loaded (and
    hashed) once per method and frame size, not once per recording. Predictors keep no state between calls;
    a call that raises is not cached."""
    return functools.cache(method_setup)


def score_recording(rec, predictor, scorer: ScorerConfig, qc: bool = True, progress=None,
                    unreadable: list | None = None) -> list[dict]:
    """Score every frame of an opened :class:`acquisition.raw.Recording`: one dict per scored frame
    (frame, lane, position, score, threshold, z, alert, new_alert, acquisition, after_acquisition, box, features),
    with torch's
    thread count as the live scorer process has it (:func:`chdl.monitor.runtime.scoring_threads`). A frame file
    that cannot be read (gone, not a PNG, truncated) is left out, as the live scorer leaves it unscored; its
    RawFormatError's message is appended to ``unreadable``."""
    from acquisition.raw import RawFormatError

    rows = []
    pipe = None
    frames = [f for f in rec.frames if f.file is not None and f.status == "ok"]
    with scoring_threads():  # as the live monitor's scorer process
        for f in (progress(frames) if progress else frames):
            try:
                pixels = rec.read(f)
            except RawFormatError as e:
                if unreadable is not None:
                    unreadable.append(str(e))
                continue
            if pipe is None:
                pipe = MonitorPipeline(predictor, run_max_value(rec.manifest), scorer, qc=qc)
            r = pipe.push(f.index, f.lane, f.position_index, pixels)
            if r is not None:
                rows.append({"frame": r.frame, "lane": r.lane, "position": r.position, "score": r.score,
                             "threshold": r.threshold, "z": r.z, "alert": r.alert, "new_alert": r.new_alert,
                             "acquisition": r.acquisition, "after_acquisition": r.after_acquisition, "box": r.box,
                             "features": r.features})
    return rows


@dataclasses.dataclass
class RunTruth:
    frames: int
    lanes: dict  # frame index -> lane
    positions: dict  # frame index -> position index
    anomalies: list[dict]  # those whose onset the recording has (their frames cut to the recorded ones)
    left_out: int = 0  # anomalies of the truth after the recording's last frame (a run cut off)


def is_eval_folder(path: Path) -> bool:
    """Whether ``path`` holds an evaluation :func:`evaluate` wrote (its metrics.json)."""
    try:
        return "methods" in json.loads((Path(path) / "metrics.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def replay_source(rec) -> Path | None:
    """The recording an opened recording replays (``notes.replay_of``, written by ``--replay``), or None."""
    src = (rec.manifest.get("notes") or {}).get("replay_of")
    return Path(src) if src else None


def run_truth(rec) -> RunTruth:
    """The process-anomaly truth of a recording: its own truth/, else that of the recording it replays
    (:func:`replay_source`). ValueError naming the folder if there is none."""
    from acquisition.raw import Recording
    from acquisition.simulator import load_truth

    candidates = [Path(rec.path)]
    src = replay_source(rec)
    if src:
        candidates.append(Path(src))
    for c in candidates:
        if (c / "truth" / "labels.jsonl").is_file():
            t = load_truth(c)
            _check_truth_fits(c, t, rec if c == Path(rec.path) else Recording.open(c))
            # an anomaly counts only where the recording has its onset (a run cut off, or a replay of one, ends
            # before the truth of the full run does: those anomalies were counted as missed)
            recorded = {f.index for f in rec.frames}
            kept = [{**a, "frames": [i for i in a["frames"] if i in recorded]} for a in t.anomalies
                    if a["onset_frame"] in recorded]
            return RunTruth(len(rec.frames), {f.index: f.lane for f in rec.frames},
                            {f.index: f.position_index for f in rec.frames}, kept, len(t.anomalies) - len(kept))
    raise ValueError(f"{rec.path}: no ground truth (truth/labels.jsonl) here or in the recording it replays")


def _check_truth_fits(path: Path, truth, rec) -> None:
    """ValueError naming the truth file when ``truth`` (of the recording at ``path``) cannot be this recording's:
    another number of labels than recorded frames (fewer frames are allowed only where the run is incomplete),
    or an anomaly at a frame the recording took in another lane or, complete, never took."""
    n, file = len(rec.frames), path / "truth" / "labels.jsonl"
    if len(truth.labels) < n or (len(truth.labels) > n and rec.complete):
        raise ValueError(f"{file}: {len(truth.labels)} labels for the {n} frames of {path}; this truth is not the "
                         "recording's")
    lane_of = {f.index: f.lane for f in rec.frames}
    for k, a in enumerate(truth.anomalies, 1):
        for i in a["frames"]:
            if (i in lane_of and lane_of[i] != a["lane"]) or (i not in lane_of and rec.complete):
                where = f"took in lane {lane_of[i]}" if i in lane_of else "does not have"
                raise ValueError(f"{path / 'truth' / 'anomalies.jsonl'}:{k}: an anomaly of lane {a['lane']} at frame "
                                 f"{i}, which {path} {where}; this truth is not the recording's")


def metrics(rows: list[dict], truth: RunTruth, frames: set | None = None) -> dict:
    """The module docstring's metrics for one method on one or more recordings (rows of score_recording
    with a ``run`` key, truth per run in ``truth``: {run: RunTruth}). ``frames``: the (run, frame) keys the
    AUROC is computed over (those every compared method scored: like for like), default all scored."""
    from sklearn.metrics import roc_auc_score

    y, s = [], []
    active_vis, active_any = set(), set()
    events_truth = []
    for run, t in truth.items():
        for a in t.anomalies:
            keys = {(run, i) for i in a["frames"]}
            active_any |= keys
            if a["visible"]:
                active_vis |= keys
                events_truth.append((run, a))
    for r in rows:
        k = (r["run"], r["frame"])
        if not math.isfinite(r["score"]) or (frames is not None and k not in frames):  # warm-up: no score yet
            continue
        if k in active_vis:
            y.append(1)
        elif k in active_any:
            continue
        else:
            y.append(0)
        s.append(r["score"])
    alerts = [r for r in rows if r["new_alert"]]
    detected, latencies, scorable, scorable_hit = 0, [], 0, 0
    for run, a in events_truth:
        lane, onset, last = a["lane"], a["onset_frame"], a["frames"][-1]
        hits = [r["frame"] - onset for r in alerts if r["run"] == run and r["lane"] == lane
                and onset <= r["frame"] <= last + 1]
        ok = a["onset_t"] >= 2
        scorable += ok
        if hits:
            detected += 1
            scorable_hit += ok
            latencies.append(min(hits))
    tolerated = set(active_any) | {(run, i + 1) for run, i in active_any}
    false = [r for r in alerts if (r["run"], r["frame"]) not in tolerated]
    clean_frames = sum(1 for r in rows if (r["run"], r["frame"]) not in active_any)
    hours = clean_frames / FPS / 3600
    n_pos = sum(y)
    return {
        "auroc": float(roc_auc_score(y, s)) if 0 < n_pos < len(y) else None,
        "positive_frames": n_pos, "negative_frames": len(y) - n_pos,
        "events": len(events_truth), "event_recall": detected / len(events_truth) if events_truth else None,
        "events_scorable": scorable, "recall_scorable": scorable_hit / scorable if scorable else None,
        "latency_frames_median": float(np.median(latencies)) if latencies else None,
        "latency_frames_max": int(max(latencies)) if latencies else None,
        "within_one_frame": sum(1 for v in latencies if v <= 1) / len(latencies) if latencies else None,
        "false_alarms": len(false), "clean_hours": hours,
        "false_alarms_per_hour": len(false) / hours if hours > 0 else None,
    }


def replay_alerts(rows: list[dict], z_on: float, z_off: float) -> list[dict]:
    """The rows of :func:`score_recording` (in recording order; several recordings told apart by a ``run``
    key) with ``alert`` and ``new_alert`` as the scorer's hysteresis sets them at ``z_on`` / ``z_off``,
    from each row's ``z`` (the score in baseline sigmas): on above ``z_on``, off below ``z_off``, reset at a
    new lane pass; a frame the acquisition QC flagged, or predicted from one (``after_acquisition``), raises no
    alert. Replayed on rows scored once (best
    with alerts off, ``z_on`` = inf), the baseline also holds the frames that would have alerted and were
    left out of it in a live run: exact for the frames before the first alert of a recording, close after."""
    out, alert, key = [], False, None
    for r in rows:
        k = (r.get("run"), r["lane"])
        if k != key:
            alert, key = False, k
        was, z = alert, r["z"]
        if math.isfinite(z):
            alert = (alert and z >= z_off) if (was or r.get("acquisition") or r.get("after_acquisition")) else z > z_on
        out.append({**r, "alert": alert, "new_alert": alert and not was})
    return out


def operating_point(rows: list[dict], levels, fa_per_hour: float = 1.0, off_ratio: float = 0.5) -> dict:
    """False alarms per hour of clean 5 fps capture at each alert level of ``levels`` (z_off = ``off_ratio``
    x z_on) on the rows of clean recordings, and (``chosen_z_on``; None if there is none) the lowest level
    from which on every level has at most ``fa_per_hour``. What the clean frames can resolve: one alarm is
    ``1 / hours`` per hour, and zero alarms bound the rate below ``3 / hours`` (95 % Poisson upper limit)."""
    hours = len(rows) / FPS / 3600
    table = []
    for z in sorted(levels):
        n = sum(r["new_alert"] for r in replay_alerts(rows, z, off_ratio * z))
        table.append({"z_on": z, "z_off": off_ratio * z, "false_alarms": n,
                      "false_alarms_per_hour": n / hours if hours > 0 else None})
    chosen = None  # the lowest level from which on every higher one qualifies
    for t in reversed(table):
        if t["false_alarms_per_hour"] is None or t["false_alarms_per_hour"] > fa_per_hour:
            break
        chosen = t["z_on"]
    return {"clean_frames": len(rows), "clean_hours": hours, "one_alarm_per_hour": 1 / hours if hours else None,
            "zero_alarm_upper_95_per_hour": 3 / hours if hours else None, "target_per_hour": fa_per_hour,
            "chosen_z_on": chosen, "levels": table}


def learned_operating_point(rows: list[dict], learned, levels, fa_per_hour: float = 1.0) -> dict:
    """The alert level of a learned scorer (:class:`chdl.monitor.learned_score.LearnedScorer`) and the weights of
    its single-feature tests, from the rows of clean recordings (:func:`score_recording`, with ``features``):
    the mixture's z and each test's z for every frame, each one's own :func:`operating_point`, the weight of
    test i ``test_gains[i]`` = the mixture's level / test i's (so each fires alone where it does at its own
    level; None, test off, where no level qualifies), then the combined score's operating point (z = max of
    the mixture's z and the weighted test z's): ``chosen_z_on`` is that level (None if none qualifies)."""
    from chdl.monitor.learned_score import TESTS

    # each frame's z's once: column 0 the mixture's, then one per test (NaN for a frame without features)
    z = np.full((len(rows), 1 + len(TESTS)), np.nan)
    for k, r in enumerate(rows):
        if r.get("features") is not None:
            z[k, 0] = (learned.nll(r["features"]) - learned.score_median) / learned.score_sigma
            z[k, 1:] = learned.test_z(r["features"])

    def with_z(column):
        return [{**r, "z": float(v)} for r, v in zip(rows, column)]

    mixture = operating_point(with_z(z[:, 0]), levels, fa_per_hour)
    tests = {t: operating_point(with_z(z[:, 1 + i]), levels, fa_per_hour) for i, t in enumerate(TESTS)}
    gains = [mixture["chosen_z_on"] / tests[t]["chosen_z_on"]
             if mixture["chosen_z_on"] is not None and tests[t]["chosen_z_on"] is not None else None for t in TESTS]
    weighted = [g * z[:, 1 + i] for i, g in enumerate(gains) if g is not None]
    # as LearnedScorer.score: a frame the mixture cannot score is not scored; a test that cannot be is left out
    combined = operating_point(with_z(np.where(np.isnan(z[:, 0]), np.nan, np.fmax.reduce([z[:, 0]] + weighted))),
                               levels, fa_per_hour)
    return {**combined, "test_gains": gains, "mixture": mixture, "tests": tests}


class EvalError(ValueError):
    """A run that cannot be evaluated (one line, naming the folder)."""


def recording_notes(rec, run) -> list[str]:
    """What the results of the opened recording ``rec`` (the folder ``run``) must say about it: a recording still
    being written or not closed complete, a torn last index line, index lines lost (chdl curate warns of each;
    monitor-eval scored such runs without a word)."""
    from acquisition.raw import live_writer

    notes = []
    if (pid := live_writer(rec.manifest)) is not None:
        notes.append(f"{run}: chdl (pid {pid}) was recording it: the {len(rec.frames)} frames it held then were scored")
    elif (status := rec.manifest.get("status")) != "complete":
        notes.append(f"{run}: run is {status!r}, not complete: the {len(rec.frames)} frames it holds were scored")
    if rec.torn_tail:
        notes.append(f"{run}: the last line of frames.jsonl is torn (capture cut off): that frame was not scored")
    if rec.lines_missing:
        notes.append(f"{run}: frames.jsonl holds {len(rec.frames)} of the {len(rec.frames) + rec.lines_missing} "
                     "frames manifest.json counts: the others were not scored")
    return notes


def _frame_shape(rec, run: str) -> tuple | None:
    """The frame shape of the recording ``rec`` (the folder ``run``): its first readable frame's; None when it
    has no frames. EvalError when none of them can be read."""
    from acquisition.raw import RawFormatError

    first_error = None
    for f in rec.frames:
        if f.file is None or f.status != "ok":
            continue
        try:
            return rec.read(f).shape
        except RawFormatError as e:
            first_error = first_error or e
    if first_error is not None:
        raise EvalError(f"{run}: none of its frames can be read (first: {first_error})")
    return None


def find_runs(paths: list) -> list[Path]:
    """Recordings to evaluate: recordings, folders of recordings, or monitor folders (their recording)."""
    from acquisition.raw import RawFormatError, find_recordings

    out, seen = [], {}
    for p in map(Path, paths):
        if p.name.endswith(".monitor") and (p / "status.json").is_file():
            p = p.with_name(p.name[: -len(".monitor")])
        try:
            found = find_recordings(p)
        except RawFormatError as e:
            raise EvalError(str(e)) from None
        for r in found:  # one recording given twice (two spellings, or itself and its folder) would count twice
            if (key := Path(r).resolve()) in seen:
                raise EvalError(f"{r}: given twice (also as {seen[key]}): its anomalies and clean frames would "
                                "count twice; give it once")
            seen[key] = r
        out += found
    if not out:
        raise EvalError(f"{', '.join(map(str, paths))}: no recordings found")
    return out


def learned_method(scorer, checkpoint=None, given_levels: dict | None = None) -> tuple[str, dict]:
    """(base method, alert levels) a learned scorer file is evaluated with: the predictor it was fitted on
    ("constant-motion", or the checkpoint given, "checkpoint:<name>"), and the levels given, else those
    measured for the file, else the defaults (learned_score.alert_levels). EvalError (one line) for a file
    that cannot be used or one fitted on a checkpoint when none is given."""
    from chdl.monitor.learned_score import LearnedScorer, alert_levels

    try:
        learned = LearnedScorer.load(scorer)
    except ValueError as e:
        raise EvalError(str(e)) from None
    levels = alert_levels(learned, **(given_levels or {}))
    if learned.predictor == "constant-motion":
        return learned.predictor, levels
    if checkpoint is None:
        raise EvalError(f"{scorer}: fitted on the errors of {learned.predictor}; give that checkpoint with --checkpoint")
    return f"checkpoint:{Path(checkpoint).name}", levels


def evaluate(paths: list, out: str | Path, checkpoint=None, qc: bool = True, progress: bool = True,
             alert_levels: dict | None = None, methods: list | None = None, scorers: list | None = None) -> dict:
    """Score every run with every method, write ``out/metrics.json``, ``out/metrics.md`` and a score plot
    per run and method (``out/scores_<folder>_<run>.png``); returns the metrics and the markdown table.
    ``alert_levels``: ScorerConfig fields for every method (e.g. ``{"z_on": 4.0, "z_off": 2.0}``; those not
    given: chdl.monitor.Z_ON / Z_OFF, or for a learned scorer the levels measured for its file); ``methods``:
    a subset of :data:`METHODS` (default all; the checkpoint comes on top); ``scorers``: learned scorer files,
    each one more method, ``<predictor>+scorer:<file name>`` (its predictor: :func:`learned_method`)."""
    from tqdm import tqdm

    from acquisition.raw import RawFormatError, Recording

    out = Path(out)
    runs = find_runs(paths)
    recs, truth, notes = {}, {}, []
    for r in runs:
        try:  # (a malformed manifest or frame index: one line, as chdl curate and chdl monitor --replay say it)
            rec = Recording.open(r)
        except RawFormatError as e:
            raise EvalError(str(e)) from None
        notes += recording_notes(rec, r)
        try:
            truth[str(r)] = run_truth(rec)
        except ValueError as e:
            raise EvalError(str(e)) from None
        recs[str(r)] = rec
    given = {Path(r).resolve(): r for r in runs}
    for r, rec in recs.items():  # a replay and the recording it replays: the same events, counted twice
        src = replay_source(rec)
        if src and src.resolve() in given:
            raise EvalError(f"{r}: replays {given[src.resolve()]}, which is given too: its anomalies and "
                            "clean frames would count twice; give one of them")
    methods = list(METHODS if methods is None else methods) + ([f"checkpoint:{Path(checkpoint).name}"] if checkpoint else [])
    from chdl.monitor.learned_score import alert_levels as levels_of

    default = dataclasses.replace(ScorerConfig(), **levels_of(None, **(alert_levels or {})))  # (a lone z_on: its z_off)
    levels = {m: {"z_on": default.z_on, "z_off": default.z_off} for m in methods}  # method -> its alert levels
    scorer_of = {}  # method -> (base method, learned scorer file)
    for f in scorers or []:
        base, own = learned_method(f, checkpoint, alert_levels)
        m = f"{base}+scorer:{Path(f).name}"
        scorer_of[m], levels[m] = (base, f), own
        methods.append(m)
    swept = sorted({*SWEEP_LEVELS, *(v["z_on"] for v in levels.values())})
    results, rows_by = {}, {}
    total = sum(len(rec.frames) for rec in recs.values()) * len(methods)
    setup = method_setups()
    shapes = {}
    from chdl.monitor.learned_score import LearnedScorer, stage_step_um

    learned = {f: LearnedScorer.load(f) for _, f in scorer_of.values()}  # (their stage steps, per recording below)
    for run, rec in recs.items():  # every predictor against every frame size before any scoring (a checkpoint or
        shapes[run] = _frame_shape(rec, run)  # a scorer of another size failed after minutes of it)
        for m in methods:
            base, scorer = scorer_of.get(m, (m, None))
            try:
                predictor, _ = setup(base, checkpoint, shapes[run], scorer)  # (cached: the scoring below reuses it)
            except ValueError as e:
                raise EvalError(f"{str(e).splitlines()[0]} (those of {run})") from None
            if scorer is not None:  # a learned scorer fitted at another stage step: its level does not hold there
                if (note := learned[scorer].step_mismatch(stage_step_um(rec.manifest))) and f"{note} ({run})" not in notes:
                    notes.append(f"{note} ({run})")
            if hasattr(predictor, "trained_max_value"):  # a checkpoint: trained at this recording's intensity scale?
                from chdl.monitor.anomaly_score import scale_mismatch

                if (note := scale_mismatch(checkpoint, predictor.trained_max_value, run_max_value(rec.manifest))) \
                        and f"{note} ({run})" not in notes:
                    notes.append(f"{note} ({run})")
    unreadable = {}  # run -> the messages of its frames that could not be read (the same for every method)
    with tqdm(total=total, unit="frame", desc="monitor-eval", disable=not progress) as bar:
        for m in methods:
            rows = []
            for run, rec in recs.items():
                base, scorer = scorer_of.get(m, (m, None))
                predictor, cfg = setup(base, checkpoint, shapes[run], scorer)
                cfg = dataclasses.replace(cfg, **levels[m])
                unreadable[run] = []
                for row in score_recording(rec, predictor, cfg, qc=qc, unreadable=unreadable[run]):
                    rows.append({**row, "run": run})
                bar.update(len(rec.frames))
            rows_by[m] = rows
    for run, why in unreadable.items():
        if why:
            notes.append(f"{len(why)} frame{'s' if len(why) != 1 else ''} of {run} could not be read and "
                         f"{'were' if len(why) != 1 else 'was'} not scored, as chdl monitor leaves them "
                         f"(first: {why[0]})")
    # AUROC over the frames every method scored (the block scorers' row-baseline warm-up leaves out frames the
    # frame difference scores: it had 44/92 positive/negative frames where they had 40/86)
    common = set.intersection(*({(r["run"], r["frame"]) for r in rows if math.isfinite(r["score"])}
                                for rows in rows_by.values()))
    for m, rows in rows_by.items():
        results[m] = metrics(rows, truth, frames=common)
        results[m]["alert_levels"] = levels[m]
        results[m]["sweep"] = sweep(rows, truth, swept)
    out.mkdir(parents=True, exist_ok=True)
    if is_eval_folder(out):  # an earlier evaluation's plots (the CLI replaces one only with --overwrite)
        for stale in out.glob("scores_*.png"):
            stale.unlink()
    own = "".join(f"; {m}: z_on {v['z_on']:g}, z_off {v['z_off']:g}" for m, v in levels.items()
                  if (v["z_on"], v["z_off"]) != (default.z_on, default.z_off))
    cut = "".join(f"note: {run} ends at frame {max(t.lanes, default=-1)}: {t.left_out} anomal{'y' if t.left_out == 1 else 'ies'} "
                  "of its truth after that are not counted\n\n" for run, t in truth.items() if t.left_out)
    cut += "".join(f"note: {n}\n\n" for n in notes)
    md = (f"{cut}alerts at z_on {default.z_on:g}, z_off {default.z_off:g}{own} (the table below; the sweep after it "
          "replays others)\n\n" + markdown(results) + "\n\n" + markdown_sweep(results))
    names: list[str] = []
    short = [f"{Path(run).parent.name}/{Path(run).name}" for run in recs]
    for run, title in zip(recs, short):
        name = base = f"scores_{Path(run).parent.name}_{Path(run).name}"
        k = 2
        while name in names:  # two runs of one name in folders of one name (elsewhere): the plot of each kept
            name, k = f"{base}_{k}", k + 1  # (a run named <name>_3 given first is skipped over, not replaced)
        names.append(name)
        plot_scores(out / f"{name}.png", {m: [r for r in rows_by[m] if r["run"] == run] for m in methods},
                    truth[run], title=title if short.count(title) == 1 else str(run))
    # top level: the levels of every method without its own (a --scorer method's are under "methods")
    from chdl.provenance import code_version

    # format and code: the numbers of one corpus moved between versions (the AUROC basis changed on 12-02), and a
    # metrics.json did not say which code made it
    summary = {"format": METRICS_FORMAT, "code": code_version(), "runs": [str(r) for r in runs],
               "alert_levels": {"z_on": default.z_on, "z_off": default.z_off}, "methods": results,
               **({"notes": notes} if notes else {})}
    files.write_bytes(out / "metrics.json", json.dumps(summary, indent=2).encode() + b"\n")
    files.write_text(out / "metrics.md", md + "\n")
    return {"methods": results, "markdown": md}


def sweep(rows: list[dict], truth: dict, levels=SWEEP_LEVELS, off_ratio: float = 0.5) -> list[dict]:
    """Event recall, within-one-frame fraction and false alarms per hour at other alert levels (z_off =
    ``off_ratio`` x z_on), the alerts replayed on the rows' z (:func:`replay_alerts`: close to, not exactly,
    what a live run at that level gives, whose baseline leaves its alerting frames out)."""
    out = []
    for z in levels:
        m = metrics(replay_alerts(rows, z, off_ratio * z), truth)
        out.append({"z_on": z, "z_off": off_ratio * z, **{k: m[k] for k in (
            "event_recall", "recall_scorable", "within_one_frame", "false_alarms", "false_alarms_per_hour")}})
    return out


def markdown_sweep(results: dict) -> str:
    """Event recall / false alarms per hour per method and alert level (the replayed ``sweep``)."""
    levels = [t["z_on"] for t in next(iter(results.values()))["sweep"]]
    lines = ["| method | " + " | ".join(f"z_on {z:g}" for z in levels) + " |", "|---|" + "---|" * len(levels)]
    for m, r in results.items():
        cells = ["—" if t["event_recall"] is None or t["false_alarms_per_hour"] is None else
                 f"{t['event_recall']:.2f} @ {t['false_alarms_per_hour']:.0f}/h" for t in r["sweep"]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "event recall @ false alarms per hour at other alert levels (z_off = z_on / 2; alerts replayed on the scores)\n\n" + "\n".join(lines)


def markdown(results: dict) -> str:
    def f(v, fmt="{:.3f}"):
        return "—" if v is None else fmt.format(v)

    lines = ["| method | AUROC | event recall (all / scorable) | within 1 frame | latency median / max (frames) | "
             "false alarms / h (scored clean frames at 5 fps) |", "|---|---|---|---|---|---|"]
    for m, r in results.items():
        lines.append(f"| {m} | {f(r['auroc'])} | {f(r['event_recall'])} / {f(r['recall_scorable'])} "
                     f"({r['events']} events) | {f(r['within_one_frame'])} | {f(r['latency_frames_median'], '{:.1f}')} / "
                     f"{f(r['latency_frames_max'], '{}')} | {f(r['false_alarms_per_hour'], '{:.1f}')} "
                     f"({r['false_alarms']} in {r['clean_hours']:.3f} h) |")
    return "\n".join(lines)


def score_unit(method: str) -> str:
    """What a method's frame score is, for a plot axis (chdl.monitor.anomaly_score, learned_score)."""
    if "+scorer:" in method:
        return "score: −log density of the error features"
    if method == "frame-difference":
        return "score: log10 whole-frame MSE vs the previous frame"
    return "score: largest block z of the error"


def plot_scores(path: Path, rows_by_method: dict, truth: RunTruth, title: str = "") -> None:
    """Score (minus its threshold's baseline) vs frame per method, the anomalies' active frames shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffuma.viz import save_figure

    n = len(rows_by_method)
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.2 * n), sharex=True, squeeze=False)
    for ax, (m, rows) in zip(axes[:, 0], rows_by_method.items()):
        for a in truth.anomalies:
            ax.axvspan(a["frames"][0] - 0.5, a["frames"][-1] + 0.5, color="tab:red" if a["visible"] else "tab:orange",
                       alpha=0.25, lw=0)
        x = [r["frame"] for r in rows]
        ax.plot(x, [r["score"] for r in rows], ".", ms=3, color="k", label="score")
        ax.plot(x, [r["threshold"] if math.isfinite(r["threshold"]) else np.nan for r in rows], "-", lw=0.8,
                color="tab:blue", label="threshold")
        al = [r for r in rows if r["new_alert"]]
        ax.plot([r["frame"] for r in al], [r["score"] for r in al], "v", color="tab:red", ms=6, label="alert")
        ax.set_ylabel("\n".join([m] + textwrap.wrap(score_unit(m), 26)), fontsize=7)  # (one line was cut off)
    axes[0, 0].set_title(f"{title}: score vs frame (red: visible anomaly active, orange: below the floor; "
                         "blue: alert level = baseline median + z_on·σ)", fontsize=9)
    axes[-1, 0].set_xlabel("frame")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    save_figure(fig, path, dpi=90)

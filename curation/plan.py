"""From raw recordings to a plan: which frames make which lane sequence, and which sequences go to
train, val or nowhere. Reads only metadata (manifests, frame indexes, file presence) — no pixels.

Grouping: a recording's frames carry ``lane`` (the lane pass) and ``position_index`` (index into the
plan's positions). Each lane's positions 0..P-1 are cut into consecutive windows of T
(``frames_per_sequence``); each window is one sequence. A position with no usable frame (dropped,
incomplete buffer, absent from the index, file missing, size/format differing from the run's) is a
*missing* frame: reconstructed if the sequence has few enough bad frames, else the sequence is
excluded. Such problems are warnings and report entries; problems that make a whole run unusable
(malformed manifest, runs of different sizes or pixel formats, no usable sequence) are errors.

Split: lanes are grouped into blocks of ``split.block_lanes`` consecutive lanes of one run; a block goes
wholly to train, val or test, so neighbouring sequences (same lane, adjacent lanes) never straddle the
split. Blocks are dealt in a seeded hash order to whichever split keeps the val and test shares closest to
``val_fraction`` and ``test_fraction`` (the paper's even train/val split and no test by default).
Sequences already known to be excluded (too many missing frames) do not count towards the balance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import numpy as np

from acquisition.raw import (FORMAT_BITS, PIXEL_DTYPES, FrameRecord, RawFormatError, Recording, check_bit_depth, find_recordings,
                            live_writer, os_problem, run_bit_depth)
from chdl.dataset import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, max_value_for_bits
from curation.config import CurateConfig


class PlanError(ValueError):
    """A problem that makes the input unusable. The message names the file and the problem."""


@dataclasses.dataclass
class RunInfo:
    path: str  # recording folder (absolute)
    run_id: str
    complete: bool
    n_records: int  # lines in frames.jsonl (after a torn tail is dropped)
    given: str = ""  # the recording folder as the command named it (what messages show; "" = ``path``)


@dataclasses.dataclass
class SequencePlan:
    index: int  # sequence index in the dataset
    run: int  # index into Plan.runs
    lane: int
    window: int  # which window of T positions along the lane
    records: list[FrameRecord | None]  # per t: the frame to read, or None = missing
    position_um: list[float]  # per t (NaN unknown)
    timestamp_ns: list[int]  # per t (-1 unknown)
    missing_reasons: dict[int, str]  # t -> why it is missing
    split: int = 0  # SPLIT_TRAIN / SPLIT_VAL / SPLIT_TEST; SPLIT_EXCLUDED is decided after QC (or if too many missing)

    @property
    def n_missing(self) -> int:
        return sum(r is None for r in self.records)


@dataclasses.dataclass
class Plan:
    runs: list[RunInfo]
    sequences: list[SequencePlan]
    height: int
    width: int
    pixel_format: str
    warnings: list[str]  # one line each, naming the file
    bit_depth: int = 8  # significant bits of the pixel values (see build_plan)
    bit_depth_from: str = "pixel format"  # where bit_depth comes from: "manifest", "--bit-depth" or "pixel format"
    bit_depth_overridden: int = 0  # runs whose recorded bit depth a --bit-depth overrides (each one warned about)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(PIXEL_DTYPES[self.pixel_format])

    @property
    def max_value(self) -> int:
        """The stored value that means intensity 1.0: 2**bit_depth - 1 (chdl.dataset.max_value_for_bits)."""
        return max_value_for_bits(self.bit_depth)

    def as_given(self, message: str) -> str:
        """``message`` with each recording's absolute path (what workers read) written as the command named it, as
        the plan's own warnings are (a missing frame was named as typed, a corrupt one by its absolute path)."""
        for r in self.runs:
            if r.given and r.given != r.path:
                message = message.replace(r.path + os.sep, r.given.rstrip(os.sep) + os.sep)
        return message

    def key_material(self) -> dict:
        """What identifies the input, for resuming: run folders, ids and frame counts, the bit depth."""
        # (how the command named a run is not what it is: `given` is left out, so a resume may name it otherwise)
        return {"runs": [{k: v for k, v in dataclasses.asdict(r).items() if k != "given"} for r in self.runs],
                "n_sequences": len(self.sequences),
                "bit_depth": self.bit_depth}


def _spans(positions: list[int]) -> str:
    """[3, 4, 5, 8] -> "3-5, 8" (sorted positions)."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _settings(rec: Recording) -> tuple[int, int, str]:
    manifest = rec.path / "manifest.json"
    s = rec.manifest.get("settings")
    if not isinstance(s, dict):
        raise PlanError(f"{manifest}: malformed manifest (no settings)")
    missing = [k for k in ("width", "height", "pixel_format") if s.get(k) is None]
    if missing:
        raise PlanError(f"{manifest}: malformed manifest (settings need width, height, pixel_format; "
                        f"missing {', '.join(missing)})")
    w, h, fmt = s["width"], s["height"], s["pixel_format"]  # types and pixel format checked by Recording.open
    if w < 16 or h < 16:
        raise PlanError(f"{manifest}: frame size {w}x{h} is too small to curate (need at least 16x16)")
    return w, h, fmt


def _check_stored_size(rec: Recording, w: int, h: int) -> None:
    """Confirm the manifest's frame size with the frame files on disk before any array of that size is
    allocated: some frame file's PNG header must say w x h (normally the first one does). PlanError
    if none does; a run with no frame records at all has nothing to allocate for."""
    first = None  # (file, size) of the first readable frame file, for the message
    for f in rec.frames:
        if f.file is None:
            continue
        size = rec.stored_size(f)
        if size == (w, h):
            return
        if size is not None and first is None:
            first = (rec.path / f.file, size)
    manifest = rec.path / "manifest.json"
    if first is not None:
        raise PlanError(f"{first[0]}: frame is {first[1][0]}x{first[1][1]} on disk, but {manifest} says {w}x{h} "
                        "and no frame file of the run has that size")
    if rec.frames:
        raise PlanError(f"{manifest}: no readable frame file confirms the frame size {w}x{h} "
                        f"({len(rec.frames)} frame records)")


def _positions_per_lane(rec: Recording) -> int:
    plan = rec.manifest.get("plan") or {}
    p = plan.get("positions")
    if isinstance(p, list):
        return len(p)
    if isinstance(p, int) and p > 0:
        return p
    if isinstance(plan.get("positions_um"), list) and plan["positions_um"]:
        return len(plan["positions_um"])
    return 1 + max((f.position_index for f in rec.frames), default=-1)


def _planned_um(rec: Recording) -> list[float]:
    plan = rec.manifest.get("plan") or {}
    um = plan.get("positions_um")
    if isinstance(um, list):
        try:
            return [float(x) for x in um]
        except (TypeError, ValueError):
            return []
    return []


def _file_problem(rec: Recording, f: FrameRecord) -> str | None:
    """Why a record's frame file cannot be used (None if it is a file). RawFormatError if it leads
    outside the run folder."""
    try:
        if not stat.S_ISREG(os.stat(rec.frame_path(f)).st_mode):
            return "frame file is not a regular file"
    except OSError as e:
        return "frame file is missing" if os_problem(e) == "no such file or folder" else f"frame file unusable ({os_problem(e)})"
    return None


def _bit_depth(rec: Recording, fmt: str, warnings: list[str]) -> tuple[int, str]:
    """(significant bits, where from) of one run: its manifest's ``settings.bit_depth``, else its pixel
    format's bits (Mono8/10/12 define them); a Mono16 run that does not say is taken at the container's
    full 16 bits, with a warning naming the run and ``--bit-depth``."""
    bits = run_bit_depth(rec.manifest)
    if bits is not None:
        return bits, "manifest" if (rec.settings.get("bit_depth") is not None) else "pixel format"
    seen = _bits_seen(rec)
    hint = (f"; its first frame's pixels reach {seen[0]}, which {seen[1]} bits hold: if the camera delivers "
            f"{seen[1]}, rerun with chdl curate --bit-depth {seen[1]} (at {FORMAT_BITS[fmt]} bits such frames are "
            "dim, and those whose pixels spread less than 1 % of full scale count as carrying no image)"
            if seen is not None and seen[1] < FORMAT_BITS[fmt] else
            "; if the camera delivers fewer significant bits, rerun with chdl curate --bit-depth N (e.g. 12)")
    warnings.append(f"{rec.path / 'manifest.json'}: no settings.bit_depth (recorded before chdl recorded bit depth, "
                    f"or the camera could not tell): using the full {FORMAT_BITS[fmt]} bits of {fmt} (max_value "
                    f"{max_value_for_bits(FORMAT_BITS[fmt])}){hint}")
    return FORMAT_BITS[fmt], "pixel format"


def _bits_seen(rec: Recording) -> tuple[int, int] | None:
    """(largest pixel value, the bits it needs, at least 8) of the run's first readable frame; None if none reads.
    One frame, so only a hint: a dark first frame can need fewer bits than the camera delivers."""
    for r in rec.frames:
        if r.file is None:
            continue
        try:
            top = int(rec.read(r).max())
        except (RawFormatError, OSError, ValueError):
            continue
        return top, max(8, top.bit_length())
    return None


def build_plan(source: str | os.PathLike, cfg: CurateConfig, bit_depth: int | None = None) -> Plan:
    """Read every recording under ``source`` and plan the dataset (PlanError / RawFormatError on
    unusable input). ``bit_depth``: the significant bits of the pixel values, overriding what the runs
    record (PlanError if their pixel format cannot hold that many); without it, every run must record the
    same (:func:`_bit_depth`)."""
    T = cfg.frames_per_sequence
    paths = find_recordings(source)  # RawFormatError: missing path, empty folder, not a recording
    warnings: list[str] = []
    runs: list[RunInfo] = []
    sequences: list[SequencePlan] = []
    ref: tuple[int, int, str, Path] | None = None
    depth: tuple[int, str, Path] | None = None  # (bits, where from, manifest) of the first run
    overridden = 0  # runs whose recorded bits --bit-depth overrides
    seen_ids: dict[str, Path] = {}
    for path in paths:
        rec = Recording.open(path)  # RawFormatError: malformed manifest / frame index
        manifest = rec.path / "manifest.json"
        if (pid := live_writer(rec.manifest)) is not None:  # (its lanes to come read as "never recorded")
            raise PlanError(f"{rec.path}: chdl (pid {pid}) is recording it now ({len(rec.frames)} frames so far); "
                            "curate it once that capture has ended")
        index_file = rec.path / "frames.jsonl"
        w, h, fmt = _settings(rec)
        if ref is None:
            ref = (w, h, fmt, manifest)
        elif (w, h) != ref[:2]:
            raise PlanError(f"{manifest}: frame size {w}x{h} differs from {ref[3]} ({ref[0]}x{ref[1]}); curate runs of one size together")
        elif fmt != ref[2]:
            raise PlanError(f"{manifest}: pixel format {fmt} differs from {ref[3]} ({ref[2]}); curate runs of one pixel format together")
        if bit_depth is not None:
            if why := check_bit_depth(fmt, bit_depth):
                raise PlanError(f"{manifest}: --bit-depth {bit_depth} refused: {why}")
            depth = (bit_depth, "--bit-depth", manifest)
            if (recorded := rec.settings.get("bit_depth")) is not None and recorded != bit_depth:
                overridden += 1
                # (mixed runs told to share one depth: the lower-depth run's frames came out as "no image")
                warnings.append(f"{manifest}: --bit-depth {bit_depth} overrides the {recorded} significant bits this "
                                f"run recorded" + (f": its pixels fill 1/{2 ** (bit_depth - recorded)} of the range, and "
                                "its frames may read as dark or as no image; curate runs of one bit depth together"
                                if bit_depth > recorded else ""))
        else:
            bits, origin = _bit_depth(rec, fmt, warnings)
            if depth is None:
                depth = (bits, origin, manifest)
            elif bits != depth[0]:
                raise PlanError(f"{manifest}: {bits} significant bits differ from {depth[2]} ({depth[0]}); curate runs of "
                                "one bit depth together (one chdl curate each), or, if one of them recorded it "
                                "wrongly, set the right one with --bit-depth N")
        run_id = str(rec.manifest.get("run_id") or path.name)
        if run_id in seen_ids:
            raise PlanError(f"{manifest}: run_id {run_id!r} is also the id of {seen_ids[run_id]}; run ids must be unique")
        seen_ids[run_id] = path
        if rec.manifest.get("status") != "complete":
            warnings.append(f"{manifest}: run is {rec.manifest.get('status')!r}, not complete; using the lane sequences it holds")
        if rec.torn_tail:
            warnings.append(f"{index_file}: last line torn (capture was cut off); ignored")
        if rec.lines_missing:
            warnings.append(f"{index_file}: holds {len(rec.frames)} of the {len(rec.frames) + rec.lines_missing} frames "
                            f"manifest.json counts (the index was cut short); the other {rec.lines_missing} are not "
                            "curated")
        P = _positions_per_lane(rec)
        if P < T:
            raise PlanError(f"{manifest}: {P} positions per lane, fewer than the {T} frames of a sequence")
        if P % T:
            warnings.append(f"{manifest}: {P} positions per lane is not a multiple of {T}; the last {P % T} of each lane are unused")
        planned_um = _planned_um(rec)
        run_idx = len(runs)
        runs.append(RunInfo(str(path.resolve()), run_id, rec.complete, len(rec.frames), str(path)))
        # (lane, position) -> record, later usable records replacing earlier ones (a re-shot position)
        by_lane: dict[int, dict[int, FrameRecord]] = {}
        problems: dict[tuple[int, int], str] = {}
        lanes = (rec.manifest.get("plan") or {}).get("lanes")  # an int >= 1 where given (validate_manifest)
        for f in rec.frames:
            if f.position_index >= P:  # lane and position are >= 0 (acquisition.raw.validate_record)
                warnings.append(f"{index_file}: frame {f.index} has lane {f.lane} / position {f.position_index} outside the plan ({P} positions); ignored")
                continue
            if lanes is not None and f.lane >= lanes:
                warnings.append(f"{index_file}: frame {f.index} has lane {f.lane}, outside the plan ({lanes} lanes); ignored")
                continue
            key = (f.lane, f.position_index)
            lane_map = by_lane.setdefault(f.lane, {})
            why = None
            if f.status == "dropped" or f.file is None:
                why = "dropped by the camera/host"
            elif f.status == "incomplete":
                why = "incomplete buffer"
            elif (f.width, f.height) != (w, h):  # what its line in the index says (the file may hold another)
                why = f"its record gives size {f.width}x{f.height}, not the run's {w}x{h}"
            elif f.pixel_format != fmt:
                why = f"its record gives pixel format {f.pixel_format}, not the run's {fmt}"
            else:
                why = _file_problem(rec, f)
            if why is not None:
                if f.position_index not in lane_map:
                    problems[key] = why
                    if f.status != "dropped":
                        # a record's own values: the index names it (the PNG was blamed for its record's size)
                        where = index_file if why.startswith("its record") or not f.file else rec.path / f.file
                        warnings.append(f"{where}: {why}; frame {f.index} (lane {f.lane}, position {f.position_index}) treated as missing")
                continue
            if f.position_index in lane_map:
                warnings.append(f"{index_file}: lane {f.lane} position {f.position_index} recorded twice; using frame {f.index}")
            lane_map[key[1]] = f
            problems.pop(key, None)
        if not by_lane:
            warnings.append(f"{index_file}: no frames recorded")
        _check_stored_size(rec, w, h)
        for lane in sorted(by_lane.keys() | {ln for ln, _ in problems}):
            got = by_lane.get(lane, {})
            # only windows that hold a record: the loop is bounded by what is on disk, not by the
            # manifest's plan (which may claim any number of positions); empty windows are never reached
            touched = {p // T for p in got} | {p // T for ln, p in problems if ln == lane}
            for win in sorted(w_ for w_ in touched if w_ < P // T):
                pos = range(win * T, (win + 1) * T)
                records = [got.get(p) for p in pos]
                reasons = {t: problems.get((lane, p), "position never recorded")
                           for t, p in enumerate(pos) if records[t] is None}
                never = [pos[t] for t, why in reasons.items() if why == "position never recorded"]
                if never:  # one line a window (a lane cut off was one line a position)
                    what = (f"position {never[0]}" if len(never) == 1 else
                            f"positions {_spans(never)} ({len(never)} of {T})")
                    warnings.append(f"{index_file}: lane {lane} {what} never recorded; treated as missing")
                um = [float(r.position_um) if r is not None else
                      (planned_um[p] if p < len(planned_um) else float("nan")) for r, p in zip(records, pos)]
                ts = [int(r.host_wall_ns) if r is not None else -1 for r in records]
                sequences.append(SequencePlan(len(sequences), run_idx, lane, win, records, um, ts, reasons))
    if not sequences:
        raise PlanError(f"{source}: no lane sequences of {T} frames in {len(runs)} recording(s)")
    assert ref is not None and depth is not None
    plan = Plan(runs, sequences, height=ref[1], width=ref[0], pixel_format=ref[2], warnings=warnings,
                bit_depth=depth[0], bit_depth_from=depth[1], bit_depth_overridden=overridden)
    assign_split(plan, cfg)
    return plan


def assign_split(plan: Plan, cfg: CurateConfig) -> None:
    """Deterministic train/val(/test) split by blocks of lanes (see module docstring). Each block, in the seeded
    order, goes to test if that brings the test share nearer ``test_fraction`` of the sequences dealt so far, else to
    val by the same rule for ``val_fraction``, else to train. With ``test_fraction`` 0 no block goes to test and the
    rule is the two-way one from before test existed, to the bit: datasets curated then are curated the same now."""
    blocks: dict[tuple[int, int], list[SequencePlan]] = {}
    for s in plan.sequences:
        blocks.setdefault((s.run, s.lane // cfg.split.block_lanes), []).append(s)

    def order(key: tuple[int, int]) -> str:
        run_id = plan.runs[key[0]].run_id
        return hashlib.sha256(f"{cfg.split.seed}:{run_id}:{key[1]}".encode()).hexdigest()

    def nearer(count: int, n: int, fraction: float, total: int) -> bool:  # do n more bring count nearer its target?
        return abs(count + n - fraction * total) < abs(count - fraction * total)

    n_val = n_test = n_all = 0
    for key in sorted(blocks, key=order):
        members = blocks[key]
        n = sum(s.n_missing <= cfg.max_bad_frames for s in members)
        total = n_all + n
        side = (SPLIT_TEST if nearer(n_test, n, cfg.split.test_fraction, total) else
                SPLIT_VAL if nearer(n_val, n, cfg.split.val_fraction, total) else SPLIT_TRAIN)
        for s in members:
            s.split = side
        n_val += n if side == SPLIT_VAL else 0
        n_test += n if side == SPLIT_TEST else 0
        n_all = total

"""The QC report: one self-contained HTML page (pictures inlined) and a JSON summary, beside the dataset.

Built from the written dataset (flags, scores, splits, originals) and the plan (warnings, missing
frames), so a resumed run writes the same report as an uninterrupted one. Contents: counts per flag
and per run, the warnings, the excluded sequences and why, a histogram of each score's deviation from
its run baseline with the thresholds drawn in, and for each flagged frame (up to
``MAX_THUMBNAIL_ROWS``) thumbnails of its neighbours, the original and the reconstruction.
"""

from __future__ import annotations

import base64
import html
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import zarr

from acquisition import files
from acquisition.raw import RawFormatError, Recording
from chdl.dataset import (FLAG_ILLUMINATION, FLAG_MISSING, FLAG_NAMES, FLAG_RECONSTRUCTED, FLAG_VIBRATION,
                          reconstruction_counts, reconstruction_method,
                          SPLIT_EXCLUDED, SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL)
from curation import qc
from curation.config import CurateConfig
from curation.plan import Plan

MAX_THUMBNAIL_ROWS = 300  # flagged frames shown with pictures (all are listed in the JSON)
HIST_BINS = 40


def _atomic_write(path: Path, data: bytes) -> None:
    if not isinstance(path, Path):  # an fsspec URL (chdl.dataset.dataset_path): an object is put whole
        path.write_bytes(data)
        return
    files.write_bytes(path, data)


def _flag_names(bits: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if bits & bit]


def _thumb(img: np.ndarray | None, width: int, max_value: float) -> str:
    """A JPEG data URI of a (H, W) frame scaled to ``width`` px ("" for None)."""
    if img is None:
        return ""
    h, w = img.shape
    small = cv2.resize(img.astype(np.float32), (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    small = np.clip(small * (255.0 / max_value), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def flagged_thumbnails(stored: np.ndarray, flags: np.ndarray, originals: dict[int, np.ndarray], width: int,
                       max_value: float) -> dict[int, tuple[str, str, str, str]]:
    """Thumbnails (previous, original, reconstruction, next; "" where there is none) of every flagged
    frame t of one sequence, keyed by t. ``stored`` (T, H, W) the sequence as stored in the dataset,
    ``flags`` (T,) its QC flags, ``originals`` {t: the original pixels of a reconstructed frame}.
    The curate workers call this while they hold the sequence; the report calls it for sequences it
    has to read back (shards written by an earlier, interrupted run)."""
    T = len(flags)
    out = {}
    for t in np.flatnonzero(flags & (FLAG_VIBRATION | FLAG_ILLUMINATION | FLAG_MISSING)).tolist():
        if t in originals:
            original = originals[t]
        elif flags[t] & FLAG_MISSING:
            original = None
        else:
            original = stored[t]  # excluded sequence: stored as recorded
        recon = stored[t] if flags[t] & FLAG_RECONSTRUCTED else None
        prev = stored[t - 1] if t > 0 else None
        nxt = stored[t + 1] if t < T - 1 else None
        out[t] = tuple(_thumb(im, width, max_value) for im in (prev, original, recon, nxt))
    return out


# What the report's flags and scores mean (one line each; docs/curation.md, "QC scores and flags", in full)
FLAG_MEANINGS = {
    "vibration": "the frame is blurred or sits off where the stage motion of its neighbours puts it "
                 "(sharpness low or misregistration_px high); reconstructed",
    "illumination": "the frame's exposure differs from its neighbours' (brightness, contrast, shading or banding); "
                    "reconstructed",
    "reconstructed": "the stored pixels are rebuilt from the good neighbours by the method that rebuilt a known-good "
                     "neighbour best (global-motion or optical-flow interpolation, the neighbour average or the "
                     "nearest copy; docs/curation.md, Reconstruction); the original is kept in the dataset's originals/",
    "missing": "no usable frame at that position (dropped, never recorded, unreadable); reconstructed or zeros",
}
SCORE_MEANINGS = {  # (unit of the deviation, what it measures, which side fires)
    "sharpness": ("natural-log ratio", "fine- over coarse-scale gradient energy against the neighbours", "low"),
    "misregistration_px": ("px, full resolution", "offset from where the neighbours' stage motion puts the frame",
                           "high"),
    "brightness": ("natural-log ratio", "median block mean intensity against the neighbours", "either side"),
    "contrast": ("natural-log ratio", "median block standard deviation against the neighbours", "either side"),
    "shading": ("natural-log ratio, edge to edge", "slope of a plane through the block ratios (a shadow gradient)", "high"),
    "banding": ("natural-log ratio", "robust spread of the row profile (flicker bands)", "high"),
}


def _svg_histogram(name: str, counts: np.ndarray, edges: np.ndarray, thresholds: list[float], side: str,
                   below: int = 0, above: int = 0) -> str:
    """A small inline SVG bar chart (log count) with the threshold(s) as red lines, its x axis labelled
    with the score's deviation unit (``SCORE_MEANINGS``), its ends and 0, and its y axis with the count scale.
    ``below``/``above``: frames outside the drawn range (the flagged extremes), written at its ends, not drawn
    into the edge bins."""
    W, H, pad, bottom = 260, 152, 18, 122
    unit = SCORE_MEANINGS.get(name, ("",))[0]
    lo, hi = float(edges[0]), float(edges[-1])
    sx = lambda x: pad + (x - lo) / (hi - lo) * (W - 2 * pad)
    top = np.log10(max(1, int(counts.max())) + 1)
    bars = []
    for c, e0, e1 in zip(counts, edges[:-1], edges[1:]):
        if c:
            h = np.log10(c + 1) / top * (bottom - pad - 10)
            bars.append(f'<rect x="{sx(e0):.1f}" y="{bottom - h:.1f}" width="{max(0.5, sx(e1) - sx(e0) - 0.5):.1f}" '
                        f'height="{h:.1f}" fill="#4878a8"/>')
    lines = []
    for t in thresholds:
        for x in ([t] if side == "high" else [-t] if side == "low" else [-t, t]):
            if lo <= x <= hi:
                lines.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{pad + 10}" y2="{bottom}" stroke="#c03030"/>')
    ticks = [(lo, "start"), (hi, "end")] + ([(0.0, "middle")] if lo < 0 < hi and min(-lo, hi) > 0.12 * (hi - lo) else [])
    tick_svg = "".join(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{bottom}" y2="{bottom + 3}" stroke="#888"/>'
                       f'<text x="{sx(x):.1f}" y="{bottom + 13}" font-size="9" text-anchor="{anchor}">{x:.3g}</text>'
                       for x, anchor in ticks)
    outside = "".join(
        f'<text x="{x}" y="{pad + 6}" font-size="9" fill="#c03030" text-anchor="{anchor}">{label}</text>'
        for n, x, anchor, label in ((below, pad, "start", f"◀ {below} below {lo:.3g}"),
                                    (above, W - pad, "end", f"{above} above {hi:.3g} ▶")) if n)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" style="border:1px solid #ddd">'
            f'<text x="{W / 2}" y="12" font-size="11" text-anchor="middle">{html.escape(name)}</text>'
            f'{"".join(bars)}{"".join(lines)}{outside}'
            f'<line x1="{pad}" x2="{W - pad}" y1="{bottom}" y2="{bottom}" stroke="#888"/>{tick_svg}'
            f'<text x="{W / 2}" y="{H - 5}" font-size="9" text-anchor="middle">deviation ({html.escape(unit)})</text>'
            f'<text x="10" y="{bottom / 2 + 6}" font-size="9" text-anchor="middle" '
            f'transform="rotate(-90 10 {bottom / 2 + 6})">frames (log, max {int(counts.max())})</text></svg>')


def _histograms(dev: np.ndarray, thr: dict[str, list[float]]) -> tuple[dict, str]:
    """Per score: histogram of deviations from the run baseline (for the JSON) and inline SVGs."""
    out, svgs = {}, []
    for k, name in enumerate(qc.SCORE_NAMES):
        v = dev[..., k].ravel()
        v = v[np.isfinite(v)]
        t = thr[name]
        side = qc.SCORE_SIDES[k]
        lo = min(float(np.percentile(v, 0.5)) if v.size else 0.0, -max(t) * 1.5 if side != "high" else 0.0)
        hi = max(float(np.percentile(v, 99.5)) if v.size else 1.0, max(t) * 1.5 if side != "low" else 0.0)
        if hi <= lo:
            hi = lo + 1.0
        # the range is robust (0.5-99.5 %, and the thresholds): the extremes, flagged frames mostly, are counted
        # apart (they were drawn into the edge bins, as if they were at the range's ends)
        below, above = int((v < lo).sum()), int((v > hi).sum())
        counts, edges = np.histogram(v[(v >= lo) & (v <= hi)], bins=HIST_BINS, range=(lo, hi))
        out[name] = {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist(), "below": below,
                     "above": above, "thresholds": sorted(set(round(x, 6) for x in t)), "side": side}
        svgs.append(_svg_histogram(name, counts, edges, sorted(set(t)), side, below, above))
    return out, " ".join(svgs)


NOT_COUNTED = {  # why a score beyond its threshold does not count towards a flag (curation.qc.counted)
    "contrast": "not counted: sharpness fired too, and blur lowers contrast",
    "sharpness": (f"not counted: an illumination score fired, and flicker or a shadow lowers sharpness (it counts "
                  f"beyond {qc.ATTRIBUTION_FACTOR:g}x its threshold)"),
}


def why_flagged(scores: np.ndarray, center: np.ndarray, thr: np.ndarray) -> list[dict]:
    """Which scores fired for one frame (``scores``, ``center``, ``thr`` (K,)), counted ones first, most severe
    first: [{score, value, center, threshold, deviation, side, times_threshold, counted[, note]}] with deviation =
    value - center (fired when beyond the threshold on the score's side); ``counted`` False (and a ``note``)
    for a score that the attribution rules leave out of the flags (:func:`curation.qc.counted`);
    ``times_threshold`` None where the threshold is 0. Empty for a missing frame."""
    base = qc.Baseline(list(center), [0.0] * len(center))
    fired = qc.exceed(scores[None], base, thr)[0]
    counts = qc.counted(scores[None], base, thr)[0]
    out = []
    for k in np.flatnonzero(fired):
        dev = float(scores[k] - center[k])
        name = qc.SCORE_NAMES[k]
        out.append({"score": name, "value": round(float(scores[k]), 5), "center": round(float(center[k]), 5),
                    "threshold": round(float(thr[k]), 5), "deviation": round(dev, 5), "side": qc.SCORE_SIDES[k],
                    "times_threshold": round(abs(dev) / float(thr[k]), 2) if thr[k] > 0 else None,
                    "counted": bool(counts[k]), **({} if counts[k] else {"note": NOT_COUNTED[name]})})
    return sorted(out, key=lambda w: (not w["counted"], -(w["times_threshold"] or np.inf)))


def _why_text(w: dict) -> str:
    times = f", {w['times_threshold']:.1f}x" if w["times_threshold"] is not None else ""
    return (f"{w['score']} {w['value']:.3g} (centre {w['center']:.3g}, deviation {w['deviation']:+.3g}, "
            f"threshold {w['threshold']:.3g}{times})")


def build_summary(out: Path, plan: Plan, cfg: CurateConfig) -> tuple[dict, dict]:
    """(summary for JSON, extra data for the HTML page)."""
    g = zarr.open_group(str(out), mode="r")
    attrs = dict(g.attrs)
    flags = g["qc_flags"][:]
    scores = g["qc_scores"][:]
    split = g["split"][:]
    N, T = flags.shape
    prov_cfg = attrs["provenance"]["config"]
    run_ids = [r.run_id for r in plan.runs]
    run_of = np.array([s.run for s in plan.sequences])
    centers = np.array([[prov_cfg["run_baselines"][rid]["center"][n] for n in qc.SCORE_NAMES] for rid in run_ids])
    thr = {n: [prov_cfg["run_thresholds"][rid][n] for rid in run_ids] for n in qc.SCORE_NAMES}
    dev = scores - centers[run_of][:, None, :]

    # frames whose file was listed but could not be decoded: missing in the dataset, present in the plan
    warnings = list(plan.warnings)
    unreadable = []
    for s in plan.sequences:
        for t, rec in enumerate(s.records):
            if rec is not None and flags[s.index, t] & FLAG_MISSING:
                try:
                    pixels = Recording(Path(plan.runs[s.run].path), {}, [], False).read(rec)
                    blank = qc.no_image(pixels, plan.max_value)
                    why = plan.as_given(f"{Path(plan.runs[s.run].path) / rec.file}: {blank}") if blank else \
                        "unreadable when curated"
                except RawFormatError as e:
                    why = plan.as_given(str(e))
                unreadable.append({"sequence": s.index, "t": t, "problem": why})
                warnings.append(f"{why}; treated as missing")

    def count(bit: int, sel=slice(None)) -> int:
        return int(((flags[sel] & bit) != 0).sum())

    per_run = []
    for r, rid in enumerate(run_ids):
        sel = run_of == r
        per_run.append({"run_id": rid, "path": plan.runs[r].path, "complete": plan.runs[r].complete,
                        "sequences": int(sel.sum()),
                        "excluded": int((split[sel] == SPLIT_EXCLUDED).sum()),
                        **{name: count(bit, sel) for bit, name in FLAG_NAMES.items()},
                        "thresholds": prov_cfg["run_thresholds"][rid], "baseline": prov_cfg["run_baselines"][rid]})
    # why each missing frame is missing: never recorded (the plan), or on disk but unreadable or without an image
    missing_why = {(s.index, int(t)): why for s in plan.sequences for t, why in s.missing_reasons.items()}
    missing_why.update({(u["sequence"], u["t"]): u["problem"] for u in unreadable})
    excluded = []
    for s in plan.sequences:
        if split[s.index] == SPLIT_EXCLUDED:
            bad = {int(t): _flag_names(int(flags[s.index, t])) for t in range(T) if flags[s.index, t]}
            # (the table said only "missing" for frames that were all on disk)
            excluded.append({"sequence": s.index, "run_id": run_ids[s.run], "lane": s.lane, "window": s.window,
                             "bad_frames": len(bad), "frames": bad,
                             "missing_reasons": {t: missing_why[s.index, t] for t in range(T)
                                                 if (s.index, t) in missing_why}})
    thr_arr = np.array([[prov_cfg["run_thresholds"][rid][n] for n in qc.SCORE_NAMES] for rid in run_ids])
    z_sequence = float(prov_cfg.get("qc", {}).get("z_sequence", 0.0))  # the sequence's own thresholds (curation.qc)
    flagged = []
    for n_, t in zip(*np.nonzero(flags & (FLAG_VIBRATION | FLAG_ILLUMINATION | FLAG_MISSING))):
        s = plan.sequences[int(n_)]
        flagged.append({"sequence": int(n_), "t": int(t), "run_id": run_ids[s.run], "lane": s.lane,
                        "flags": _flag_names(int(flags[n_, t])), "excluded": bool(split[n_] == SPLIT_EXCLUDED),
                        "reconstructed_by": reconstruction_method(int(flags[n_, t])),
                        **({"missing": missing_why.get((int(n_), int(t)), "frame missing")}
                           if flags[n_, t] & FLAG_MISSING else {}),
                        "why": why_flagged(scores[n_, t], centers[s.run],
                                           qc.frame_thresholds(scores[n_], thr_arr[s.run], z_sequence)[t]),
                        "scores": {name: (None if not np.isfinite(scores[n_, t, k]) else round(float(scores[n_, t, k]), 5))
                                   for k, name in enumerate(qc.SCORE_NAMES)}})
    both = (flags & FLAG_VIBRATION != 0) & (flags & FLAG_ILLUMINATION != 0)
    hists, hist_svg = _histograms(dev, thr)
    summary = {
        "dataset": str(out),
        "sequences": N, "frames_per_sequence": T, "frames": N * T,
        "splits": {"train": int((split == SPLIT_TRAIN).sum()), "val": int((split == SPLIT_VAL).sum()),
                   "test": int((split == SPLIT_TEST).sum()), "excluded": int((split == SPLIT_EXCLUDED).sum())},
        "flags": {name: count(bit) for bit, name in FLAG_NAMES.items()},
        "reconstructed_by": reconstruction_counts(flags),
        "flags_note": (f"{int(both.sum())} frame(s) carry both the vibration and the illumination flag and are "
                       "counted under each; a frame is reconstructed once"),
        "both_vibration_and_illumination": int(both.sum()),
        "flagged_fraction": round(float(((flags & (FLAG_VIBRATION | FLAG_ILLUMINATION)) != 0).mean()), 6),
        "max_bad_frames": cfg.max_bad_frames,
        "runs": per_run,
        "warnings": warnings,
        "unreadable_frames": unreadable,
        "excluded_sequences": excluded,
        "flagged_frames": flagged,
        "histograms": hists,
        "score_names": list(qc.SCORE_NAMES),
        "config": {k: v for k, v in prov_cfg.items() if k not in ("run_baselines", "run_thresholds")},
    }
    return summary, {"hist_svg": hist_svg, "group": g, "attrs": attrs, "flags": flags, "split": split}


def _originals_index(g: zarr.Group) -> dict[int, dict[int, tuple[str, int]]]:
    """{sequence: {t: (shard key, row)}}: where the original of each reconstructed frame is kept."""
    m: dict[int, dict[int, tuple[str, int]]] = {}
    for key in g["originals_index"].array_keys():
        for row, (s, t) in enumerate(g["originals_index"][key][:]):
            m.setdefault(int(s), {})[int(t)] = (key, row)
    return m


def _stored_sequences(frames: zarr.Array, seq_ids: list[int], batch: int = 8):
    """Yield frames[n, :, 0] (T, H, W), as stored, for each n in ``seq_ids``. Reads go ``batch``
    sequences at a time on two threads (zarr's chunk decoding releases the GIL; the report runs after
    the workers are done, so both cores are free)."""
    with ThreadPoolExecutor(2) as pool:
        for b in range(0, len(seq_ids), batch):
            yield from pool.map(lambda n: frames[n, :, 0], seq_ids[b:b + batch])


def _render_html(summary: dict, extra: dict, plan: Plan, cfg: CurateConfig,
                 thumbnails: dict[tuple[int, int], tuple[str, str, str, str]]) -> str:
    g, flags = extra["group"], extra["flags"]
    max_value = float(extra["attrs"]["max_value"])
    tw = cfg.thumbnail_width
    esc = html.escape
    T = summary["frames_per_sequence"]

    items = summary["flagged_frames"][:MAX_THUMBNAIL_ROWS]
    thumbs = dict(thumbnails)
    to_read = sorted({it["sequence"] for it in items if (it["sequence"], it["t"]) not in thumbs})
    if to_read:
        by_seq = _originals_index(g)
        orig_pixels: dict[str, np.ndarray] = {}  # one read per shard's originals (opening a zarr array costs ~2 ms)
        for n, seq in zip(to_read, _stored_sequences(g["frames"], to_read)):
            originals = {}
            for t, (key, row) in by_seq.get(n, {}).items():
                if key not in orig_pixels:
                    orig_pixels[key] = g["originals"][key][:]
                originals[t] = orig_pixels[key][row, 0]
            thumbs.update({(n, t): th for t, th in flagged_thumbnails(seq, flags[n], originals, tw, max_value).items()})
    rows = []
    for item in items:
        n, t = item["sequence"], item["t"]
        sc = ", ".join(f"{k}={v:.3g}" for k, v in item["scores"].items() if v is not None)
        why = "; ".join(_why_text(w) for w in item["why"] if w["counted"])
        why = ("fired: " + why) if why else ""
        if item.get("missing"):
            why = f"missing: {item['missing']}" + (f"; {why}" if why else "")
        if uncounted := [w for w in item["why"] if not w["counted"]]:
            why += "; also beyond its threshold, " + "; ".join(f"{_why_text(w)} {w['note']}" for w in uncounted)
        cells = "".join(f'<td>{f"<img src={uri!r}>" if uri else "<span class=na>—</span>"}</td>' for uri in thumbs[n, t])
        status = ("excluded" if item["excluded"] else
                  f"reconstructed by {item['reconstructed_by']}" if item["reconstructed_by"] else "")
        rows.append(f"<tr><td>seq {n} t {t}<br>{esc(item['run_id'])} lane {item['lane']}<br>"
                    f"<b>{esc(', '.join(item['flags']))}</b> {status}<br>{esc(why)}"
                    f"<br><small>{esc(sc)}</small></td>{cells}</tr>")
    more = len(summary["flagged_frames"]) - MAX_THUMBNAIL_ROWS
    more_note = f"<p>{more} more flagged frames are listed in the JSON summary only.</p>" if more > 0 else ""

    def table(head: list[str], body: list[list]) -> str:
        h = "".join(f"<th>{esc(str(x))}</th>" for x in head)
        b = "".join("<tr>" + "".join(f"<td>{esc(str(x))}</td>" for x in r) + "</tr>" for r in body)
        return f"<table><tr>{h}</tr>{b}</table>"

    flag_table = table(["flag", "frames", "meaning"], [[k, v, FLAG_MEANINGS.get(k, "")] for k, v in summary["flags"].items()])
    score_table = table(["score", "fires", "deviation in", "measures"],
                        [[n, SCORE_MEANINGS[n][2], SCORE_MEANINGS[n][0], SCORE_MEANINGS[n][1]] for n in qc.SCORE_NAMES])
    run_table = table(["run", "sequences", "excluded", "vibration", "illumination", "reconstructed", "missing"],
                      [[r["run_id"], r["sequences"], r["excluded"], r["vibration"], r["illumination"],
                        r["reconstructed"], r["missing"]] for r in summary["runs"]])
    thr_table = table(["run"] + list(qc.SCORE_NAMES),
                      [[r["run_id"]] + [f"{r['thresholds'][n]:.4g}" for n in qc.SCORE_NAMES] for r in summary["runs"]])
    excl_table = table(["sequence", "run", "lane", "window", "bad frames", "why"],
                       [[e["sequence"], e["run_id"], e["lane"], e["window"], e["bad_frames"],
                         "; ".join(f"t{t}: {'/'.join(f)}" + (f" ({e['missing_reasons'][t]})" if t in e["missing_reasons"] else "")
                                   for t, f in e["frames"].items())] for e in summary["excluded_sequences"]])
    warn = "".join(f"<li>{esc(w)}</li>" for w in summary["warnings"]) or "<li>none</li>"
    by_method = ", ".join(f"{m} {n}" for m, n in summary["reconstructed_by"].items() if n) or "none"
    sp = summary["splits"]
    test = f"test {sp['test']}, " if sp.get("test") else ""  # (a held-out split only where curate made one)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>chdl curate QC report: {esc(Path(summary['dataset']).name)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0 1.2em}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px;vertical-align:top}} th{{background:#f0f0f0}}
img{{display:block}} .na{{color:#999}} small{{color:#555}}
</style></head><body>
<h1>QC report — {esc(summary['dataset'])}</h1>
<p>{summary['sequences']} sequences × {T} frames = {summary['frames']} frames.
Train {sp['train']}, val {sp['val']}, {test}excluded {sp['excluded']} (more than {summary['max_bad_frames']} bad frames).
Flagged (vibration or illumination): {100 * summary['flagged_fraction']:.2f}% of frames.</p>
<h2>Counts per flag</h2>{flag_table}<p>{esc(summary['flags_note'])}.
Reconstructed frames by method (chosen per frame by the self-check, docs/curation.md): {esc(by_method)}.</p>
<h2>Per run</h2>{run_table}
<h2>Scores</h2><p>Each frame is compared with up to 4 neighbours over the region they share after alignment;
a score fires when its deviation from the run baseline exceeds the threshold (docs/curation.md).</p>{score_table}
<h2>Thresholds (max(floor, z·σ<sub>run</sub>))</h2>{thr_table}
<h2>Score histograms</h2><p>Deviation of each score from its run baseline, all frames, log count; red lines: the
run thresholds (a sequence's own spread can raise them for its frames).</p>
<div>{extra['hist_svg']}</div>
<h2>Warnings</h2><ul>{warn}</ul>
<h2>Excluded sequences ({len(summary['excluded_sequences'])})</h2>{excl_table}
<h2>Flagged frames ({len(summary['flagged_frames'])})</h2>{more_note}
<table><tr><th>frame</th><th>previous (stored)</th><th>original</th><th>reconstruction</th><th>next (stored)</th></tr>
{''.join(rows)}</table>
</body></html>
"""


def write_report(out: Path, plan: Plan, cfg: CurateConfig, html_path: Path, json_path: Path,
                 thumbnails: dict[tuple[int, int], tuple[str, str, str, str]] | None = None) -> dict:
    """Write the QC report of the dataset ``out``. ``thumbnails`` {(sequence, t): the four thumbnails
    of :func:`flagged_thumbnails`} made by the curate workers; flagged frames without them are read
    back from the dataset."""
    summary, extra = build_summary(out, plan, cfg)
    _atomic_write(html_path, files.encode_text(_render_html(summary, extra, plan, cfg, thumbnails or {})))
    _atomic_write(json_path, (json.dumps(summary, indent=1, sort_keys=False) + "\n").encode())
    return summary

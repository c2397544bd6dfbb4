"""The alert level (z_on) of ``chdl monitor`` from a measured operating point: false alarms per hour of
clean 5 fps capture vs z_on on clean recordings, and the lowest z_on that keeps them at or below a target.

    python tools/monitor_operating_point.py CLEAN_RUNS... [--checkpoint C] [--scorer F [--write-scorer]]
        [--fa-per-hour 1] [--out op.json]

Every frame is scored once, with alerts off, by the monitor's own pipeline (acquisition QC on), and the
hysteresis (z_off = z_on / 2, reset at each lane pass) is replayed at each level
(chdl.monitor.evaluate.operating_point). One false alarm per hour at 5 fps is one per 18,000 frames: the
output says what the clean frames can resolve (one alarm = 1/hours per hour; zero alarms only bound the
rate below 3/hours at 95 %). Recordings: as for ``chdl monitor-eval`` (clean ones: truth without
anomalies, e.g. ``chdl simulate corpus ... --fault-rate 0``). With ``--scorer F --write-scorer`` the chosen
level is written into the scorer file (``alert_levels``), which ``chdl monitor --scorer F`` and ``chdl
monitor-eval --scorer F`` then use unless ``--z-on`` / ``--z-off`` are given. For a learned scorer the
mixture and each of its single-feature tests are measured alone first; the tests' weights (``test_gain``:
the mixture's level / the test's) are written with the level, which is that of them all together
(chdl.monitor.evaluate.learned_operating_point).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import machine, more_than, write_json  # noqa: E402


def check_not_fitted_on(scorer, runs) -> None:
    """Raise ValueError if any of ``runs`` is a recording the learned ``scorer`` file was fitted on: its
    scores there are lower than on new clean capture, so a level measured there is too low (a scorer fitted
    on 20 lanes and measured on them chose z_on 3, where fresh clean lanes needed 11.5)."""
    from chdl.monitor.learned_score import LearnedScorer

    fitted = {Path(r).resolve() for r in LearnedScorer.load(scorer).fitted_on.get("recordings", [])}
    same = [r for r in runs if Path(r).resolve() in fitted]
    if same:
        raise ValueError(f"{same[0]}: {scorer} was fitted on this recording; measure its alert level on other "
                         "clean recordings")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("runs", nargs="+", help="clean recordings (run folders or folders of runs)")
    ap.add_argument("--checkpoint", default=None, help="a chdl train checkpoint (default: constant motion)")
    ap.add_argument("--scorer", default=None, help="a learned scorer file (chdl monitor-fit-scorer) fitted with that predictor")
    ap.add_argument("--write-scorer", action="store_true",
                    help="write the chosen level into the --scorer file (its alert_levels)")
    ap.add_argument("--fa-per-hour", type=more_than(0), default=1.0, help="target false alarms per hour (default 1)")
    ap.add_argument("--levels", default="3:16:0.5", help="z_on grid start:stop:step (stop inclusive)")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    if a.out:  # before minutes of scoring: a place the table can be written
        from acquisition.files import file_in_the_way

        blocker = file_in_the_way(Path(a.out).resolve())
        if Path(a.out).is_dir() or blocker is not None or not Path(a.out).resolve().parent.is_dir():
            why = ("a folder" if Path(a.out).is_dir() else f"{blocker} is not a folder" if blocker is not None else
                   f"the folder {Path(a.out).parent} does not exist")
            print(f"Error: {a.out}: cannot write the table there ({why})", file=sys.stderr)
            return 1
        if Path(a.out).exists() and not a.overwrite:  # (it replaced one silently)
            print(f"Error: {a.out}: already exists (use --overwrite to replace it)", file=sys.stderr)
            return 1
    try:
        return _run(a, ap)
    except KeyboardInterrupt:
        print("interrupted: nothing was written (the scorer file is as it was)", file=sys.stderr)
        return 130


def _run(a, ap) -> int:

    from tqdm import tqdm

    from acquisition.raw import Recording
    from chdl.monitor.evaluate import find_runs, learned_operating_point, method_setups, operating_point, score_recording
    from chdl.monitor.learned_score import refuse_anomalies

    try:
        lo, hi, step = (float(v) for v in a.levels.split(":"))
        if step <= 0 or hi < lo:
            raise ValueError
    except ValueError:
        ap.error(f"--levels: expected start:stop:step with step > 0 and stop >= start, got {a.levels!r}")
    if a.write_scorer and not a.scorer:
        ap.error("--write-scorer needs --scorer")
    levels = [round(lo + k * step, 6) for k in range(int(math.floor((hi - lo) / step + 1e-9)) + 1)]
    method = "checkpoint" if a.checkpoint else "constant-motion"
    try:
        runs = find_runs(a.runs)
        recs = [Recording.open(r) for r in runs]
        refuse_anomalies(recs, "the alert level is measured on clean capture only")
        if a.scorer:
            check_not_fitted_on(a.scorer, runs)
    except ValueError as e:  # anomalies in the "clean" capture, a scorer file that cannot be used or fitted on these
        print(f"Error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if a.scorer:  # a level measured on lanes stepped otherwise than the scorer's is not the level it has on its own
        from chdl.monitor.learned_score import LearnedScorer, stage_step_um

        scorer = LearnedScorer.load(a.scorer)
        for warning in dict.fromkeys(w for rec in recs if (w := scorer.step_mismatch(stage_step_um(rec.manifest)))):
            print(f"warning: {warning}", file=sys.stderr)
    rows = []
    setup = method_setups()  # a checkpoint or scorer file loaded once per frame size, not per recording
    for run, rec in zip(runs, recs):
        shape = rec.read(rec.frames[0]).shape
        try:
            predictor, cfg = setup(method, a.checkpoint, shape, a.scorer)
        except ValueError as e:  # e.g. a scorer fitted on another frame size
            print(f"Error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        frames = [f for f in rec.frames if f.file is not None and f.status == "ok"]
        with tqdm(total=len(frames), unit="frame", desc=Path(run).name, disable=a.quiet) as bar:
            def progress(it):
                for f in it:
                    yield f
                    bar.update(1)
            for r in score_recording(rec, predictor, dataclasses.replace(cfg, z_on=math.inf, z_off=math.inf), progress=progress):
                rows.append({**r, "run": str(run)})
    if a.scorer:  # the mixture's level, each test's, their weights, and all together
        from chdl.monitor.learned_score import LearnedScorer

        op = learned_operating_point(rows, LearnedScorer.load(a.scorer), levels, a.fa_per_hour)
        alone = ", ".join(f"{t} {o['chosen_z_on']}" for t, o in op["tests"].items())
        from chdl.monitor.learned_score import TESTS

        weights = ", ".join(f"{t} {g:.3g}" if g is not None else f"{t} off" for t, g in zip(TESTS, op["test_gains"]))
        print(f"mixture alone: lowest z_on {op['mixture']['chosen_z_on']}; tests alone: {alone}; their weights "
              f"(the mixture's level / the test's): {weights}; together (below):")
        floor = min(levels)
        for t, o in [("the mixture", op["mixture"]), *op["tests"].items()]:
            if o["chosen_z_on"] == floor:  # no false alarm even at the lowest level tried: the level is only a bound
                print(f"caution: {t} raised no false alarm even at the lowest level tried ({floor:g}): its level, and "
                      "the weight that follows from it, is where --levels starts, not a measurement; start --levels "
                      "lower to resolve it")
    else:
        op = operating_point(rows, levels, a.fa_per_hour)
    op["predictor"] = predictor.name if hasattr(predictor, "name") else method
    op["scorer"] = a.scorer
    print(f"{op['clean_frames']} scored clean frames = {op['clean_hours']:.3f} h at 5 fps: one alarm = "
          f"{op['one_alarm_per_hour']:.2f}/h; zero alarms bound the rate below {op['zero_alarm_upper_95_per_hour']:.2f}/h (95 %)")
    print("| z_on | z_off | false alarms | per hour |\n|---|---|---|---|")
    for t in op["levels"]:
        print(f"| {t['z_on']:g} | {t['z_off']:g} | {t['false_alarms']} | {t['false_alarms_per_hour']:.2f} |")
    print(f"lowest z_on with <= {a.fa_per_hour:g} false alarms/h from there on: {op['chosen_z_on']}")
    if op["one_alarm_per_hour"] > a.fa_per_hour:
        print(f"caution: these clean frames cannot resolve {a.fa_per_hour:g}/h (one alarm is {op['one_alarm_per_hour']:.2f}/h): "
              f"the choice only means no false alarm here; record about {3 / a.fa_per_hour:g} h of clean capture "
              "to show the target")
    if a.out:
        write_json(Path(a.out), {**op, "machine": machine(), "runs": list(a.runs), "scorer": a.scorer,
                                 "checkpoint": a.checkpoint})
    if a.write_scorer:
        if op["chosen_z_on"] is None:
            print(f"no level qualifies: {a.scorer} left as it was")
            return 1
        from chdl.monitor.learned_score import LearnedScorer

        learned = LearnedScorer.load(a.scorer)
        learned.test_gain = list(op["test_gains"])
        learned.alert_levels = {"z_on": op["chosen_z_on"], "z_off": op["chosen_z_on"] / 2,
                                "target_per_hour": a.fa_per_hour, "clean_frames": op["clean_frames"],
                                "clean_hours": round(op["clean_hours"], 4), "runs": [str(r) for r in a.runs]}
        learned.save(a.scorer)
        print(f"wrote z_on {op['chosen_z_on']:g}, z_off {op['chosen_z_on'] / 2:g}, test weights {op['test_gains']} "
              f"into {a.scorer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

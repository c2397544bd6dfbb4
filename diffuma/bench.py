"""``chdl bench``: train several models under one budget on one dataset, evaluate them with one metric code,
and write the paper's comparison tables (Markdown + JSON), plots and prediction grids.

The budget is either epoch counts (``--epochs``, below) or a wall-clock training time (``--budget-minutes M``):
then every model trains, one after the other in this process, for M minutes of training time (``run.max_minutes``:
optimiser steps and their data loading, not validation or checkpoints; the schedule length is planned from the
first steps' times, see ``diffuma.training.budget``), its final weights (``last.pt``) are evaluated, and the
report records per model the budget, the steps and samples it reached, its training time and why it stopped.
There is no metric-by-epoch table then; everything else is as below.

For models M and epoch counts E = [e1 < ... < eN]:

1. Every model is trained once, for eN epochs, by the trainer (``diffuma.training.trainer.build_trainer``
   + ``fit``, what ``train_from_config`` does), with the same run settings (``--set run.<field>=...``):
   only the model differs. The trainer's ``last.pt`` after each epoch in E is also kept as
   ``checkpoints/epoch_NNNN.pt``.
2. Each kept checkpoint is evaluated by ``diffuma.evaluation.evaluate_checkpoint`` on the chosen split:
   the "metric by epoch" table comes from one run per model, not from retraining; the "overall" table is
   the eN checkpoint.
3. Prediction length (``--pred-len 3,6,9,12``): by default every model is retrained (eN epochs) per length
   with ``run.out_frames`` = that length, as the paper's Table 5 (whose numbers are not monotone in the
   length, i.e. separate trainings); ``--pred-len-mode horizon`` instead averages the first k predicted
   frames of the main runs (free, but needs the main runs to predict at least max(k) frames).
4. Throughput: training samples/s (``training_loss`` + backward + AdamW step) and inference samples/s
   (no-grad forward), timed here on the run's device, batch size and precision after warm-up steps, on
   one batch of the training split; and the parameter count.

Every table has a row per baseline of ``diffuma.evaluation.BASELINES`` (copy-last-frame, constant-motion: same
code, same sequences) and names its metric convention.
Output folder: bench.json, bench.md, plots/{by_epoch,per_frame,by_pred_len}.png, grid_seq<i>.png,
runs/<model>[-pl<k>]/ (ordinary trainer run folders). Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from acquisition import files
from diffuma.evaluation import (BASELINES, METRIC_FORMATS, baseline_predictions, ci95_line, paired_line,
                                per_sequence_csv, result_key)
from diffuma.flops import format_params, train_flops_per_sample

UNDERUSED_BUDGET = 0.9  # a budget run that trained for less than this share of its budget is flagged in the report
BUDGET_EPOCHS = 10**6  # run.epochs of a --budget-minutes run: a cap the budget always reaches first


class BenchError(ValueError):
    """A problem with the bench request; the message says what (and which file, where there is one)."""


@dataclasses.dataclass
class ModelSpec:
    label: str           # row name in the tables: "simvp" or "simvp:v1"
    name: str            # registry name
    preset: str          # preset of that model
    overrides: dict      # model config field overrides


# --------------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------------

def parse_int_list(text: str | None, what: str) -> list[int]:
    """"10,20,40" -> [10, 20, 40] (sorted, unique, each >= 1); "" or None -> []."""
    if text is None or str(text).strip() == "":
        return []
    try:
        values = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError as e:
        raise BenchError(f"{what}: expected comma-separated integers, got {text!r}") from e
    if not values or values[0] < 1:
        raise BenchError(f"{what}: values must be integers >= 1, got {text!r}")
    return values


def parse_models(text: str, preset: str, overrides: list[str]) -> tuple[list[ModelSpec], dict]:
    """``"diffuma,simvp,simvp:v1"`` + ``--set`` entries -> model specs and the shared run overrides.

    ``--set run.<field>=v`` applies to every run; ``--set model.<field>=v`` to every model (each must have the
    field); ``--set <model>.<field>=v`` (a registry name) to that model only. Values are parsed as YAML."""
    from acquisition.config_validation import did_you_mean, load_yaml
    from diffuma.models.registry import list_models, list_presets, model_config

    known = list_models()
    specs: list[ModelSpec] = []
    for item in [m.strip() for m in text.split(",") if m.strip()]:
        name, _, p = item.partition(":")
        if name not in known:
            raise BenchError(f"--models: unknown model {name!r}{did_you_mean(name, known)}")
        p = p or preset
        if p not in list_presets(name):
            raise BenchError(f"--models: {name} has no preset {p!r}{did_you_mean(p, list_presets(name))}")
        if any(s.label == item for s in specs):
            raise BenchError(f"--models: {item!r} is listed twice")
        specs.append(ModelSpec(item, name, p, {}))
    if not specs:
        raise BenchError("--models: give at least one model, e.g. --models diffuma,simvp")
    run: dict = {}
    for text_ in overrides:
        key, eq, raw = text_.partition("=")
        section, dot, field = key.strip().partition(".")
        if not eq or not dot or not field:
            raise BenchError(f"--set {text_!r}: expected run.<field>=v, model.<field>=v or <model>.<field>=v")
        value = load_yaml(raw, f"--set {text_}", error=BenchError) if raw.strip() else None
        if section == "run":
            run[field] = value
        elif section == "model" or section in known:
            hit = [s for s in specs if section in ("model", s.name)]
            if not hit:
                raise BenchError(f"--set {text_!r}: model {section!r} is not in --models")
            for s in hit:
                s.overrides[field] = value
        else:
            raise BenchError(f"--set {text_!r}: key must start with run., model. or a model name ({', '.join(known)})")
    for s in specs:
        try:
            model_config(s.name, s.preset, **s.overrides)
        except (TypeError, ValueError, KeyError) as e:
            raise BenchError(f"--set: model {s.label}: {e}") from e
    return specs, run


# --------------------------------------------------------------------------------------------------
# Training, evaluation, throughput
# --------------------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def keep_epoch_checkpoints(trainer, epochs) -> None:
    """Makes ``trainer`` also keep ``checkpoints/epoch_NNNN.pt``, a copy of ``last.pt``, at the end of every
    epoch in ``epochs``. The trainer saves ``last.pt`` right after finishing an epoch (with batch_in_epoch
    reset to 0), so the copy is exactly that epoch's state; its run config has no such option."""
    epochs = frozenset(int(e) for e in epochs)
    save = trainer.save

    def save_and_keep(name: str = "last.pt") -> None:
        save(name)
        if name == "last.pt" and trainer.batch_in_epoch == 0 and trainer.epoch in epochs and trainer.dist.main \
                and trainer.pending_log is None:  # (not before the epoch's validation: a stop's last.pt)
            with files.replacing(trainer.ckpt_dir / f"epoch_{trainer.epoch:04d}.pt") as tmp:
                shutil.copyfile(trainer.ckpt_dir / "last.pt", tmp)

    trainer.save = save_and_keep


def resumes(run_dir: Path, resume: bool) -> bool:
    """Whether ``--resume`` continues a run in ``run_dir`` (it has a checkpoint) rather than starting it."""
    return resume and (run_dir / "checkpoints" / "last.pt").is_file()


def _utc_now() -> str:
    """The time now, as bench.json records times: ``2026-12-03T06:35:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def train_run(spec: ModelSpec, run: dict, data: Path, out: Path, keep_epochs, *, resume: bool = False,
              progress: bool = True) -> Path:
    """One training run (``diffuma.training.trainer.build_trainer`` + ``fit``, i.e. ``train_from_config``) to
    the end of its schedule (``run["epochs"]``), keeping the epoch checkpoints in ``keep_epochs``. With
    ``resume``, a run already in ``out`` continues (a finished one is left as it is)."""
    from diffuma.training.trainer import ResumeConfigMismatch, build_trainer

    resume = resumes(out, resume)
    config = {"model": {"name": spec.name, "preset": spec.preset, **spec.overrides}, "run": dict(run)}
    try:
        trainer = build_trainer(config, data, out, resume=resume, progress=progress)
        keep_epoch_checkpoints(trainer, keep_epochs)
        return Path(trainer.fit(resume=resume))
    except ResumeConfigMismatch as e:
        raise BenchError(f"{out}: this bench's {spec.label} run was trained with other options ({e.diff}); resume "
                         "with the --models, --preset, --epochs/--budget-minutes and --set of the bench you resume, "
                         "or choose another --out") from None


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    path = Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}.pt"
    if not path.is_file():
        raise BenchError(f"{path}: missing (the run did not reach epoch {epoch})")
    return path


def training_record(state: dict) -> dict:
    """What a run's final checkpoint says about its training: ``budget_minutes`` (run.max_minutes or None),
    ``steps`` reached, ``samples`` seen, ``train_seconds`` (training time, diffuma.training.budget),
    ``planned_steps`` (the schedule length its budget planned, or None) and ``stopped_by`` ("schedule",
    "budget" or "epochs", ``diffuma.training.budget.stop_reason``). Keys a checkpoint lacks are None."""
    from diffuma.training.budget import stop_reason

    minutes = state["config"]["run"].get("max_minutes")
    seconds, planned = state.get("train_seconds"), state.get("planned_total_steps")
    return {"budget_minutes": minutes, "steps": state["step"], "samples": state.get("samples_seen"),
            "train_seconds": seconds, "planned_steps": planned,
            "stopped_by": stop_reason(state["step"], seconds or 0.0, None if minutes is None else 60.0 * minutes,
                                      planned)}


RECIPE_KEYS = ("optimizer", "lr", "weight_decay", "betas", "schedule", "warmup_steps", "min_lr_ratio", "grad_clip",
               "batch_size", "precision", "ema_decay", "seed", "frame_offset")


def training_recipe(state: dict) -> dict:
    """The run settings a methods section states (``RECIPE_KEYS`` of the checkpoint's resolved ``run`` config: the
    defaults included, not only what was overridden; precision and device as "auto" resolved), and
    ``train_sequences``: the size of the training split it drew from."""
    run = state["config"]["run"]
    recipe = {k: run.get(k) for k in RECIPE_KEYS}
    # "auto" as it resolved (checkpoints from before 2026-12-03 record only the setting)
    recipe["precision"] = state.get("precision_used") or recipe["precision"]
    recipe["device"] = state.get("device_used") or run.get("device")
    recipe["train_sequences"] = state["data"].get("n_train")  # (None in a checkpoint from before 2026-12-03)
    return recipe


def _horizon(result: dict, k: int) -> dict:
    """Overall metrics over the first k predicted frames (every metric is a mean over frames)."""
    frames = result["per_frame"][:k]
    return {m: float(np.mean([f[m] for f in frames])) for m in METRIC_FORMATS}


def amp_dtype_for(precision: str, device: torch.device):
    """The autocast dtype the trainer uses for run.precision on this device (None = fp32)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def measure_throughput(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device,
                       amp_dtype=None, steps: int = 5, warmup: int = 2) -> dict:
    """Samples/s of training steps (training_loss + backward + AdamW step) and of no-grad inference on the
    batch (x, y), after ``warmup`` untimed steps of each. Works on a copy; ``model`` is left untouched."""
    import copy

    model = copy.deepcopy(model).to(device)
    x, y = x.to(device), y.to(device)
    amp = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()

    def train_step(i):
        with amp():
            loss, _ = model.training_loss(x, y, step=i, total_steps=warmup + steps)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    for i in range(warmup):
        train_step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(warmup + i)
    sync()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            with amp():
                model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            with amp():
                model(x)
        sync()
        infer_s = time.perf_counter() - t0
    b = x.shape[0]
    return {"train_samples_per_s": b * steps / train_s, "infer_samples_per_s": b * steps / infer_s,
            "batch_size": b, "device": str(device), "timed_steps": steps,
            "precision": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32"}


# --------------------------------------------------------------------------------------------------
# Output: tables, plots
# --------------------------------------------------------------------------------------------------


def _fmt(m: str, v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else METRIC_FORMATS[m].format(v)


def _fmt_rate(v) -> str:
    return "–" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


def _fmt_seconds(v) -> str:
    return "–" if v is None else (f"{v:.3g} s" if v < 60 else f"{v / 60:.3g} min")


def _grouped_table(keys, suffix: str, rows) -> list[str]:
    """A Markdown table with MSE, MAE and SSIM columns for each key (column names ``MSE`` + suffix.format(key));
    ``rows`` are ``(label, metrics_of)`` pairs, ``metrics_of(key)`` giving a metrics dict or None (shown as –)."""
    cols = ("mse", "mae", "ssim")
    out = ["| model | " + " | ".join(" | ".join(m.upper() + suffix.format(k) for m in cols) for k in keys) + " |",
           "|---|" + "---:|---:|---:|" * len(keys)]
    for label, metrics_of in rows:
        cells = []
        for k in keys:
            o = metrics_of(k)
            cells += [_fmt(m, o[m] if o else None) for m in cols]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _budget_text(report: dict) -> str:
    """"40 epochs", "1 epoch" or "10 min of training time": what every model of the bench was given."""
    if report.get("budget_minutes") is not None:
        return f"{report['budget_minutes']:g} min of training time"
    n = report["epochs"][-1]
    return f"{n} epoch{'' if n == 1 else 's'}"


def busy_machine(m: dict, budget_minutes: float | None) -> str | None:
    """The warning for a time-budget bench begun on a machine whose 1-minute load average already exceeds its cores
    (``m``: :func:`machine`), else None. A trial's 0.5-minute budget bought DIFFUMA 20 steps and SimVP 8 at load 3-4 on
    2 cores, against 102 and 94 on the idle machine: the figures are then the load's as much as the models'."""
    load, cores = m.get("load_average_1min"), m.get("cores")
    if budget_minutes is None or load is None or not cores or load <= cores:
        return None
    return (f"load average {load:g} on {cores} core{'s' if cores != 1 else ''} before the bench began: other work "
            "shares this machine, so each model's time budget buys fewer steps, by however much the load takes "
            "while it trains (bench.md records it); measure on an idle machine to compare models")


def machine() -> dict:
    """The machine a bench ran on, for its report: CPU model (``/proc/cpuinfo``, else ``platform.processor()``),
    cores this process may use, torch's intra-op threads, the CUDA device if any, and the 1-minute load average
    (a shared machine's load moves a budget bench's figures: equal wall time is equal compute only alike)."""
    import os
    import platform

    cpu = platform.processor() or None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def _previous_report(out: Path) -> dict:
    """The bench.json a resumed bench wrote before ({} if there is none or it cannot be read: then its
    figures are measured again)."""
    try:
        previous = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _not_the_same_bench(previous: dict, asked: dict) -> str | None:
    """Why a resume with ``asked`` (models, epochs, budget_minutes, pred_lens, pred_len_mode, convention, split)
    would not continue the bench ``previous`` (its bench.json), or None. A resume with fewer --models or without
    its --pred-len rewrote bench.json without their rows, exit 0. (bench.json before 2026-12-03 has no "asked":
    its models are those it holds rows of, and the other options its top-level keys.)"""
    before = previous.get("asked") or {k: previous.get(k) for k in asked if k != "models"}
    diffs = []
    for key, option in (("epochs", "--epochs"), ("budget_minutes", "--budget-minutes"), ("pred_lens", "--pred-len"),
                        ("pred_len_mode", "--pred-len-mode"), ("convention", "--convention"), ("split", "--split")):
        if key in before and before[key] != asked[key]:
            diffs.append(f"{option} {_option_text(before[key])} (given: {_option_text(asked[key])})")
    if "models" in before:
        if before["models"] != asked["models"]:
            diffs.append(f"--models {','.join(before['models'])} (given: {','.join(asked['models'])})")
    elif missing := [m for m in previous.get("models") or {} if m not in asked["models"]]:
        diffs.append(f"--models with {','.join(missing)} (given: {','.join(asked['models'])})")
    return f"it was begun with {'; '.join(diffs)}" if diffs else None


def _option_text(value) -> str:
    if value is None or value == []:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def underused_budget(report: dict, training: dict | None) -> float | None:
    """The share of its budget a budget run trained for, when it is under ``UNDERUSED_BUDGET`` (not an
    equal-compute row); None otherwise (and for epoch runs)."""
    if not training or report.get("budget_minutes") is None:
        return None
    used = (training.get("train_seconds") or 0.0) / (report["budget_minutes"] * 60)
    return used if used < UNDERUSED_BUDGET else None


def terminal_summary(report: dict) -> list[str]:
    """The lines ``chdl bench`` prints at the end: final MSE/MAE/SSIM per model (with the steps and samples it
    reached, and a warning where a budget run used too little of its budget) and per baseline, labels padded to
    the longest one so the columns line up, then the split when it is not val, and the convention."""
    rows = {label: (r["final"]["overall"], r.get("training")) for label, r in report["models"].items()}
    rows.update({name: (report[result_key(name)]["overall"], None) for name in BASELINES})
    width = max(map(len, rows), default=0)
    lines = []
    for label, (o, training) in rows.items():
        reached = f"  ({training['steps']} steps, {training['samples']} samples)" if training else ""
        if (used := underused_budget(report, training)) is not None:  # (bench.md says so; the terminal did not)
            reached += f"  -- used {used:.0%} of its budget: not an equal-compute row"
        lines.append(f"  {label:<{width}}  MSE {o['mse']:.5g}  MAE {o['mae']:.5g}  SSIM {o['ssim']:.4f}{reached}")
    if report.get("split", "val") != "val":
        lines.append(f"  scored on the {report['split']} split")
    lines += [f"  note ({label}): {n}" for label, r in report["models"].items() for n in r.get("notes", [])]
    return lines + [f"  metric convention: {report['convention']}"]


def markdown_report(report: dict) -> str:
    conv = report["convention"]
    note = f"Metric convention: `{conv}` — {report['convention_note']}"
    ds = report["dataset"]
    baselines = {name: report[result_key(name)] for name in BASELINES}
    head = (f"{report['split']} split of `{ds['path']}`: {report['n_sequences']} sequences, "
            f"{ds['in_frames']}→{ds['out_frames']} frames of {ds['channels']}×{ds['height']}×{ds['width']}; "
            f"every model given {_budget_text(report)} with the same run settings.")
    if "code" in report:  # (benches written before 2026-12-02 do not record it)
        code, content, data = report["code"], ds["identity"].get("content"), ds["identity"].get("data")
        head += (f" Dataset content {content[:16] if content else 'not recorded'}"
                 f"{', data ' + data[:16] if data else ''}; chdl {code['chdl']}, commit "
                 f"{(code['git_commit'] or 'unknown')[:12]}{' (edited)' if code['git_dirty'] else ''}, code "
                 f"{code['code']}, torch {code.get('torch')}; seeds "
                 f"{', '.join(sorted({str(r.get('seed')) for r in report['models'].values()}))}.")
    if "machine" in report:  # (benches written before 2026-12-02 do not record it)
        m = report["machine"]
        threads = m["torch_threads"]
        head += (f" Machine: {m['cpu'] or 'CPU not known'}, {m['cores']} cores, torch {threads} "
                 f"thread{'' if threads == 1 else 's'}{', ' + m['cuda'] if m.get('cuda') else ''}; load average {m['load_average_1min']} at the "
                 f"start, {m.get('load_average_1min_end', '?')} at the end.")
    if report.get("resumed"):
        head += f" Begun {report['created']}, resumed {', '.join(report['resumed'])}."
    trained = {label: r["trained_under"] for label, r in report["models"].items() if r.get("trained_under")}
    if trained:  # (benches written before 2026-12-03 do not record it) what each budget ran beside
        head += " Trained: " + "; ".join(
            f"{label} from {t['at']}, load average {t['load_average_1min']} before, {t['load_average_1min_end']} "
            "after" for label, t in trained.items()) + "."
    L = ["# Benchmark", "", head, ""]
    # Overall
    L += ["## Overall (final weights)", "",
          "| model | params | steps | samples | train compute (GFLOP) | train time | samples/s in training "
          "| timed train samples/s | timed inference samples/s | MSE ↓ | MAE ↓ | SSIM ↑ | PSNR (dB) ↑ |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in report["models"].items():
        t, tr = r.get("throughput") or {}, r.get("training") or {}
        o = r["final"]["overall"]
        reached = tr["samples"] / tr["train_seconds"] if tr.get("samples") and tr.get("train_seconds") else None
        per_sample = r.get("gflops_train_sample")  # (benches written before 2026-12-02 do not record it)
        compute = f"{per_sample * tr['samples']:,.0f}" if per_sample is not None and tr.get("samples") else "–"
        L.append(f"| {label} | {format_params(r['params'])} | {tr.get('steps', '–')} | {tr.get('samples') or '–'} | "
                 f"{compute} | {_fmt_seconds(tr.get('train_seconds'))} | {_fmt_rate(reached)} | "
                 f"{_fmt_rate(t.get('train_samples_per_s'))} | "
                 f"{_fmt_rate(t.get('infer_samples_per_s'))} | " + " | ".join(_fmt(m, o[m]) for m in METRIC_FORMATS) + " |")
    for name, b in baselines.items():
        L.append(f"| {name} | 0 | – | – | – | – | – | – | – | " + " | ".join(_fmt(m, b["overall"][m]) for m in METRIC_FORMATS)
                 + " |")
    any_t = next((r["throughput"] for r in report["models"].values() if r.get("throughput")), None)
    L += ["", note]
    # what each row is: a table pasted from here must not read as the default preset (or the paper's v1 when
    # --set made it smaller)
    L += ["", "Models: " + "; ".join(
        f"{label} = {r.get('name', label.split(':')[0])} preset `{r.get('preset', '?')}`"
        + (", " + ", ".join(f"{k}={v!r}" for k, v in sorted(r["overrides"].items())) if r.get("overrides") else "")
        for label, r in report["models"].items()) + "."]
    final_rows = {label: r["final"] for label, r in report["models"].items()}
    final_rows.update({name: b for name, b in baselines.items()})
    if line := ci95_line(final_rows):
        L += ["", line]
    L += ["", *(paired_line(label, r["paired"]) for label, r in report["models"].items() if r.get("paired"))]
    L += [f"\n**Note** ({label}): {n}" for label, r in report["models"].items() for n in r.get("notes", [])]
    recipes = {label: r["recipe"] for label, r in report["models"].items() if r.get("recipe")}
    if recipes:  # (benches written before 2026-12-03 do not record it) the resolved settings, defaults included
        keys = [*RECIPE_KEYS, "device", "train_sequences"]
        L += ["", "Training recipe (each run's resolved settings, defaults included; none = off: no EMA, no gradient "
                  "clipping; docs/training.md):", "",
              "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        L += [f"| {label} | " + " | ".join("none" if rc.get(k) is None else str(rc[k]) for k in keys) + " |"
              for label, rc in recipes.items()]
    if any_t:
        L += ["", f"Throughput: batch {any_t['batch_size']}, {any_t['device']}, {any_t['precision']}, mean of "
                  f"{any_t['timed_steps']} timed steps after warm-up; train = training_loss + backward + AdamW step."]
    L += ["", "Train time = wall-clock of the optimiser steps and their data loading (validation and checkpoints "
              "excluded); samples = training sequences seen; train compute = samples x the FLOPs of one sample's "
              "training step (forward + backward, diffuma.flops; elementwise ops such as the selective scan's "
              "recurrence are not counted); samples/s in training = samples / train time (what the "
              "budget bought, on this machine as loaded then); the timed columns are a separate pass after training, "
              "one model alone on a fixed batch, so they compare the models' cost, not the run's."]
    if report.get("budget_minutes") is not None:
        L += ["", f"Budget: {report['budget_minutes']:g} min of training time per model, one model after the other "
                  "on this machine; the schedule length was planned from each model's first steps and once more "
                  "at 10 % of the budget (diffuma.training.budget). Stopped by:", ""]
        for label, r in report["models"].items():
            tr = r["training"]
            line = f"- {label}: {tr['stopped_by']}, " + (
                f"{tr['steps']} of {tr['planned_steps']} planned steps" if tr["planned_steps"] is not None else
                f"{tr['steps']} steps, before the schedule was planned (the budget ran out during the first "
                "timed steps)")
            if (used := underused_budget(report, tr)) is not None:
                line += (f" -- **used {used:.0%} of its budget**: its steps got faster after the schedule was planned "
                         "(a busier machine while it planned?); not an equal-compute row, re-run it on a quiet machine")
            L.append(line)
    L.append("")
    # By epoch
    epochs = report["epochs"]
    if epochs:
        L += ["## Metric by epoch", ""]
        L += _grouped_table(epochs, "@{}", [
            *((label, lambda e, r=r: (r["by_epoch"].get(str(e)) or {}).get("overall"))
              for label, r in report["models"].items()),
            *((name, lambda e, b=b: b["overall"]) for name, b in baselines.items())])
        L += ["", note, ""]
    # By prediction length
    if report.get("pred_lens"):
        pls = report["pred_lens"]
        mode = report["pred_len_mode"]
        L += ["## Metric by prediction length", "",
              ("Each model retrained for each length (run.out_frames = length)." if mode == "retrain" else
               "First k predicted frames of the main runs."), ""]
        L += _grouped_table(pls, " PL{}", [
            *((label, lambda k, r=r: r["by_pred_len"].get(str(k))) for label, r in report["models"].items()),
            *((name, lambda k, name=name: report[f"{result_key(name)}_by_pred_len"].get(str(k)))
              for name in BASELINES)])
        L += ["", note, ""]
    L += ["## Figures", ""]
    if epochs:
        L += ["![metric by epoch](plots/by_epoch.png)", ""]
    L += ["![per frame](plots/per_frame.png)", ""]
    if report.get("pred_lens"):
        L += ["![by prediction length](plots/by_pred_len.png)", ""]
    for g in report.get("grids", []):
        L += [f"![predictions]({g})", ""]
    return "\n".join(L)


def write_plots(report: dict, out: Path) -> None:
    """plots/by_epoch.png (epoch budgets only), plots/per_frame.png, plots/by_pred_len.png (with --pred-len);
    every baseline of ``BASELINES`` as a line in its ``diffuma.viz.BASELINE_STYLES`` style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffuma.viz import BASELINE_STYLES, save_figure

    (out / "plots").mkdir(parents=True, exist_ok=True)

    conv = report["convention"]
    per = "per pixel" if conv == "per_pixel" else "summed over C·H·W"  # diffuma.metrics.CONVENTIONS
    axis_label = {"mse": f"MSE ({per}, [0,1] intensities)", "mae": f"MAE ({per}, [0,1] intensities)",
                   "ssim": "SSIM (Gaussian σ 1.5, data range 1)"}
    baselines = {name: report[result_key(name)] for name in BASELINES}
    if report["epochs"]:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, m in zip(axes, ("mse", "mae", "ssim")):
            for label, r in report["models"].items():
                es = [e for e in report["epochs"] if str(e) in r["by_epoch"]]
                ax.plot(es, [r["by_epoch"][str(e)]["overall"][m] for e in es], marker="o", label=label)
            for name, b in baselines.items():
                ax.axhline(b["overall"][m], label=name, **BASELINE_STYLES[name])
            ax.set_xticks(report["epochs"])
            ax.set_xlabel("epoch")
            ax.set_ylabel(axis_label[m], fontsize=8)
            ax.set_title(f"{m.upper()} ({conv})")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{report['split']} metrics by training epoch ({report.get('n_sequences', '?')} sequences)")
        # (y=1.03 put it above the canvas: save_figure's tight_layout keeps a default-placed title inside)
        save_figure(fig, out / "plots" / "by_epoch.png", dpi=110)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, m in zip(axes, ("mse", "mae", "ssim")):
        for label, r in report["models"].items():
            pf = r["final"]["per_frame"]
            ax.plot([f["frame"] for f in pf], [f[m] for f in pf], marker="o", label=label)
        for name, b in baselines.items():
            pf = b["per_frame"]
            ax.plot([f["frame"] for f in pf], [f[m] for f in pf], label=name, **BASELINE_STYLES[name])
        ax.set_xlabel("predicted frame (t+k)")
        if len(pf) <= 20:  # one tick per predicted frame
            ax.set_xticks([f["frame"] for f in pf])
        ax.set_ylabel(axis_label[m], fontsize=8)
        ax.set_title(f"{m.upper()} per frame ({conv})")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['split']} split, {report.get('n_sequences', '?')} sequences: final weights of each model")
    save_figure(fig, out / "plots" / "per_frame.png", dpi=110)

    if report.get("pred_lens"):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        pls = report["pred_lens"]
        for ax, m in zip(axes, ("mse", "mae", "ssim")):
            for label, r in report["models"].items():
                ks = [k for k in pls if str(k) in r["by_pred_len"]]
                ax.plot(ks, [r["by_pred_len"][str(k)][m] for k in ks], marker="o", label=label)
            for name in BASELINES:
                c = report[f"{result_key(name)}_by_pred_len"]
                ks = [k for k in pls if str(k) in c]
                ax.plot(ks, [c[str(k)][m] for k in ks], label=name, **BASELINE_STYLES[name])
            ax.set_xlabel("prediction length")
            ax.set_ylabel(axis_label[m], fontsize=8)
            ax.set_xticks(pls)
            ax.set_title(f"{m.upper()} ({conv})")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{report['split']} split, {report.get('n_sequences', '?')} sequences, by prediction length "
                     f"({report.get('pred_len_mode')})")
        save_figure(fig, out / "plots" / "by_pred_len.png", dpi=110)


# --------------------------------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------------------------------

def run_bench(data: str | Path, models: str, epochs: list[int] | None, out: str | Path, *,
              budget_minutes: float | None = None, pred_lens=(), pred_len_mode: str = "retrain",
              preset: str = "default", overrides=(), convention: str = "per_pixel", split: str = "val",
              max_eval_sequences: int | None = None, grid_sequences: int = 2, throughput_steps: int = 5,
              resume: bool = False, progress: bool = True) -> dict:
    """Runs the whole bench (module docstring); returns the report that is also written to bench.json.

    The budget is ``epochs`` (epoch counts) or ``budget_minutes`` (minutes of training time per model), not
    both."""
    from chdl.dataset import empty_split, open_dataset
    from chdl.provenance import code_version
    from chdl.torch_dataset import SequenceDataset
    from diffuma.evaluation import NonFinitePredictions, evaluate_checkpoint
    from diffuma.metrics import check_ssim_size
    from diffuma.metrics import CONVENTION_NOTES, CONVENTIONS
    from diffuma.training.checkpoint import build_model_from_checkpoint, load_checkpoint
    from diffuma.training.config import ConfigError, resolve_config
    from diffuma.viz import prediction_grid

    data, out = Path(data), Path(out)
    if convention not in CONVENTIONS:
        raise BenchError(f"--convention must be one of {', '.join(CONVENTIONS)}")
    if pred_len_mode not in ("retrain", "horizon"):
        raise BenchError("--pred-len-mode must be retrain or horizon")
    epochs = sorted({int(e) for e in epochs or ()})
    if epochs and budget_minutes is not None:
        raise BenchError("--epochs and --budget-minutes are mutually exclusive: give one of them")
    if budget_minutes is not None and not budget_minutes > 0:
        raise BenchError(f"--budget-minutes must be > 0, got {budget_minutes}")
    if budget_minutes is None and (not epochs or epochs[0] < 1):
        raise BenchError("--epochs: give at least one epoch count >= 1")
    pred_lens = sorted({int(k) for k in pred_lens})
    specs, run = parse_models(models, preset, list(overrides))
    for key, option in (("epochs", "--epochs"), ("max_minutes", "--budget-minutes")):
        if key in run:  # (it was overridden without a word: --epochs 1 --set run.epochs=3 trained 1 epoch)
            raise BenchError(f"--set run.{key}: the bench sets it from {option}" + (
                "; give --epochs instead (and no --budget-minutes) for an epoch bench"
                if key == "epochs" and budget_minutes is not None else f"; give {option} instead"))
    run = ({**run, "epochs": epochs[-1]} if budget_minutes is None else
           {**run, "epochs": BUDGET_EPOCHS, "max_minutes": float(budget_minutes)})
    # an error names the --set that gave the value, as chdl train's does (it said "--set: run.lr: ...")
    blame = {("run", key.strip().partition(".")[2]): f"--set {text}"
             for text in overrides if (key := text.partition("=")[0]).strip().startswith("run.")}
    for s in specs:
        try:
            resolve_config({"model": {"name": s.name, "preset": s.preset, **s.overrides}, "run": run}, blame=blame)
        except ConfigError as e:
            raise BenchError(str(e) if str(e).startswith("--set ") else f"--set: {e}") from e
    reader = open_dataset(data)  # DatasetIncompleteError / DatasetFormatError name the path
    attrs = reader.attrs
    T = int(attrs["frames_per_sequence"])
    _, _, C, H, W = reader.frames.shape
    try:  # before any training (it trained, then crashed in scikit-image; and train's hint, val_every_epochs=0,
        check_ssim_size(int(H), int(W), data)  # does not apply: the bench always scores SSIM)
    except ValueError as e:
        raise BenchError(str(e)) from None
    t_in = int(run.get("in_frames") or attrs["in_frames"])
    t_out = int(run.get("out_frames") or attrs["out_frames"])
    offset = int(run.get("frame_offset") or 0)
    if len(reader.indices(split)) == 0:
        raise BenchError(empty_split(data, split))
    if len(reader.indices("train")) == 0:
        raise BenchError(f"{data}: the train split has no sequences to train on")
    if epochs and run.get("max_steps"):  # the epoch checkpoints the tables read would never be written
        from diffuma.training.config import RunConfig

        per_epoch = math.ceil(len(reader.indices("train")) / int(run.get("batch_size") or RunConfig().batch_size))
        if int(run["max_steps"]) < epochs[-1] * per_epoch:
            raise BenchError(f"--set run.max_steps={run['max_steps']} ends every run before epoch {epochs[-1]} "
                             f"({epochs[-1] * per_epoch} steps of {per_epoch} per epoch), which --epochs asks for; "
                             "drop run.max_steps or ask for fewer epochs")
    if pred_lens:
        if pred_len_mode == "horizon" and pred_lens[-1] > t_out:
            raise BenchError(f"--pred-len {pred_lens[-1]} > the {t_out} frames the runs predict; add "
                             f"--set run.out_frames={pred_lens[-1]} or use --pred-len-mode retrain")
        if offset + t_in + pred_lens[-1] > T:
            after = f" after a frame offset of {offset}" if offset else ""
            raise BenchError(f"{data}: sequences have {T} frames, too few for {t_in} input + {pred_lens[-1]} "
                             f"predicted frames{after} (--pred-len {pred_lens[-1]})")
    if (out / "bench.json").exists() and not resume:
        raise BenchError(f"{out}: already holds a bench (bench.json); use --resume or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where the folder goes, a read-only parent (it was a traceback)
        raise BenchError(f"{out}: cannot create the bench folder{files.cannot_create(out, e)}") from None

    now = _utc_now()
    previous = _previous_report(out) if resume else {}
    asked = {"models": [s_.label for s_ in specs], "epochs": epochs, "budget_minutes": budget_minutes,
             "pred_lens": pred_lens, "pred_len_mode": pred_len_mode if pred_lens else None, "convention": convention,
             "split": split}
    if previous and (why := _not_the_same_bench(previous, asked)):
        raise BenchError(f"{out}: {why}; resume with the options of the bench you resume, or choose another --out")
    report: dict = {
        "schema": "chdl.bench/1", "created": previous.get("created", now),
        "convention": convention, "convention_note": CONVENTION_NOTES[convention], "split": split,
        "epochs": epochs, "budget_minutes": budget_minutes,
        "pred_lens": pred_lens, "pred_len_mode": pred_len_mode if pred_lens else None,
        "dataset": {"path": str(data), "in_frames": t_in, "out_frames": t_out, "channels": int(C),
                    "height": int(H), "width": int(W), "frames_per_sequence": T,
                    # what a cited row can be traced to: the data wherever it lies, and the code
                    "path_resolved": str(Path(data).resolve()), "max_value": float(reader.attrs["max_value"]),
                    "identity": reader.identity()},
        "code": code_version(torch=True), "machine": machine(),
        "run": run, "asked": asked, "models": {},
        **{result_key(name): None for name in BASELINES},
        **{f"{result_key(name)}_by_pred_len": {} for name in BASELINES},
    }
    if previous:  # a resumed bench keeps when it began; each resume is listed
        report["resumed"] = [*previous.get("resumed", []), now]
    budget_text = _budget_text(report)
    if (busy := busy_machine(report["machine"], budget_minutes)) is not None:
        _log(f"warning: {busy}")

    def evaluate(ck: Path) -> dict:
        try:
            return evaluate_checkpoint(ck, data, split=split, convention=convention, max_sequences=max_eval_sequences)
        except NonFinitePredictions as e:  # a NaN row looked like "not measured" in bench.md, NaN in bench.json
            raise BenchError(str(e)) from None

    def final_checkpoint(run_dir: Path) -> Path:
        """The weights a run ends with: the last epoch's checkpoint, or last.pt when a budget ended it."""
        return epoch_checkpoint(run_dir, epochs[-1]) if epochs else Path(run_dir) / "checkpoints" / "last.pt"

    final_ckpts: dict[str, Path] = {}
    for spec in specs:
        safe = spec.label.replace(":", "-")
        kept = f" (keeping epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))})" if epochs else ""
        if resumes(out / "runs" / safe, resume):
            _log(f"{spec.label}: resuming its run (to train for {budget_text} in all{kept}; a finished run is kept "
                 "as it is)")
        else:
            _log(f"{spec.label}: training for {budget_text}{kept}")
        before = {"at": _utc_now(), "load_average_1min": machine()["load_average_1min"]}
        run_dir = train_run(spec, run, data, out / "runs" / safe, epochs, resume=resume, progress=progress)
        entry: dict = {"name": spec.name, "preset": spec.preset, "overrides": spec.overrides,
                       "run_dir": str(run_dir), "by_epoch": {}, "by_pred_len": {}}
        # the conditions its training ran under (equal wall time is equal compute only on a machine loaded alike)
        entry["trained_under"] = {**before, "load_average_1min_end": machine()["load_average_1min"]}
        for e in epochs[:-1]:
            ck = epoch_checkpoint(run_dir, e)
            _log(f"{spec.label}: evaluating epoch {e}")
            entry["by_epoch"][str(e)] = {"overall": evaluate(ck)["model"]["overall"], "checkpoint": str(ck)}
        ck = final_ckpts[spec.label] = final_checkpoint(run_dir)
        _log(f"{spec.label}: evaluating the final weights ({ck.name})")
        res = evaluate(ck)
        entry["final"] = res["model"]
        entry["paired"] = res["paired"]  # against each baseline, sequence by sequence
        entry["notes"] = res.get("notes", [])  # as eval gives them (few sequences, training sequences scored, ...)
        if epochs:
            entry["by_epoch"][str(epochs[-1])] = {"overall": res["model"]["overall"], "checkpoint": str(ck)}
        for name in BASELINES:
            report[result_key(name)] = report[result_key(name)] or res[result_key(name)]
        report["n_sequences"] = res["n_sequences"]
        report["sequences"] = res["sequences"]  # (dataset indices, the order of every per_sequence list)
        # steps, samples and training time reached; parameter count and throughput, on one batch of the
        # training split, as the run trained
        state = load_checkpoint(ck)
        entry["training"] = training_record(state)
        entry["seed"] = int(state["config"]["run"]["seed"])
        entry["recipe"] = training_recipe(state)
        entry["checkpoint"], entry["checkpoint_blake3"] = str(ck), res["checkpoint_blake3"]
        prev = (previous.get("models") or {}).get(spec.label) or {}
        unchanged = prev.get("checkpoint_blake3") == res["checkpoint_blake3"]  # trained before this resume
        if unchanged and prev.get("trained_under"):
            entry["trained_under"] = prev["trained_under"]  # (not this resume's idle machine)
        model, _ = build_model_from_checkpoint(state, source=ck)
        entry["params"] = int(sum(p.numel() for p in model.parameters()))
        entry["model_config"] = state["model_config"]
        # what equal time bought: FLOPs per training sample (counted on the meta device), times the samples seen
        try:
            entry["gflops_train_sample"] = train_flops_per_sample(state["model_name"], state["model_config"], t_in,
                                                                  t_out, int(C), int(H), int(W)) / 1e9
        except Exception as e:  # (a model whose training_loss cannot run on the meta device: its row, not the bench)
            entry["gflops_train_sample"] = None
            entry["notes"].append(f"FLOPs not counted: its training_loss does not run on the meta device "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; docs/model.md, "
                                  "\"Adding a model\")")
            _log(f"{spec.label}: warning: {entry['notes'][-1]}")
        if throughput_steps > 0 and unchanged and prev.get("throughput"):
            entry["throughput"] = prev["throughput"]  # the same weights: the pass timed when it was trained
        elif throughput_steps > 0:
            rc = state["config"]["run"]
            device = torch.device("cuda" if rc["device"] != "cpu" and torch.cuda.is_available() else "cpu")
            ds = SequenceDataset(data, "train", in_frames=t_in, out_frames=t_out, frame_offset=offset)
            xs, ys = zip(*(ds[i] for i in range(min(int(rc["batch_size"]), len(ds)))))
            _log(f"{spec.label}: timing {throughput_steps} training and inference steps")
            entry["throughput"] = measure_throughput(model, torch.stack(xs), torch.stack(ys), device=device,
                                                     amp_dtype=amp_dtype_for(rc["precision"], device),
                                                     steps=throughput_steps)
        for k in pred_lens:
            if pred_len_mode == "horizon":
                entry["by_pred_len"][str(k)] = _horizon(entry["final"], k)
                for name in BASELINES:
                    report[f"{result_key(name)}_by_pred_len"][str(k)] = _horizon(report[result_key(name)], k)
                continue
            if k == t_out:
                res_k = {"model": entry["final"], **{result_key(n): report[result_key(n)] for n in BASELINES}}
            else:
                sub_dir = out / "runs" / f"{safe}-pl{k}"
                again = resumes(sub_dir, resume)
                _log(f"{spec.label}: {'resuming its run' if again else 'training'} for {budget_text} to predict {k} "
                     f"frames{' (a finished run is kept as it is)' if again else ''}")
                sub = train_run(spec, {**run, "out_frames": k}, data, sub_dir, epochs[-1:],
                                resume=resume, progress=progress)
                res_k = evaluate(final_checkpoint(sub))
            entry["by_pred_len"][str(k)] = res_k["model"]["overall"]
            for name in BASELINES:
                report[f"{result_key(name)}_by_pred_len"][str(k)] = res_k[result_key(name)]["overall"]
        report["models"][spec.label] = entry
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next model starts from a clean device
        files.write_text(out / "bench.json", json.dumps(report, indent=2))  # progress so far, inspectable

    # prediction grids: the first sequences of the split, every model's final checkpoint
    report["grids"] = []
    if grid_sequences > 0:
        ds = SequenceDataset(data, split, in_frames=t_in, out_frames=t_out, frame_offset=offset)
        device = torch.device("cuda" if run.get("device", "auto") != "cpu" and torch.cuda.is_available() else "cpu")
        seqs = [ds[i] for i in range(min(grid_sequences, len(ds)))]
        preds = [{} for _ in seqs]
        for label, ck in final_ckpts.items():  # one model on the device at a time
            model = build_model_from_checkpoint(load_checkpoint(ck))[0].to(device)
            with torch.inference_mode():
                for i, (x, _) in enumerate(seqs):
                    preds[i][label] = model(x[None].to(device)).float()[0].clamp(0, 1).cpu()
            del model
        for i, (x, y) in enumerate(seqs):
            name = f"grid_seq{i}.png"
            preds[i] |= {k: v[0] for k, v in baseline_predictions(x[None], t_out).items()}  # (the tables' rows too)
            index = report["sequences"][i]  # (the dataset's index: chdl predict's seq_<index>, per_sequence.csv's)
            prediction_grid(out / name, x, y, preds[i], title=f"{split} sequence {i}, dataset index {index} (each model "
                                                              f"given {budget_text})")
            report["grids"].append(name)
    report["machine"]["load_average_1min_end"] = machine()["load_average_1min"]
    write_plots(report, out)
    files.write_text(out / "bench.md", markdown_report(report))
    files.write_text(out / "per_sequence.csv", per_sequence_csv(report["sequences"], {
        **{label: r["final"] for label, r in report["models"].items()},
        **{name: report[result_key(name)] for name in BASELINES}}))  # (rows named as in bench.md)
    files.write_text(out / "bench.json", json.dumps(report, indent=2))
    _log(f"wrote {out / 'bench.md'}, {out / 'bench.json'} and {out / 'per_sequence.csv'} (each row's value per sequence)")
    return report

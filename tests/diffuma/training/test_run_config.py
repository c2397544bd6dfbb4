"""Config loading and validation: every field checked, unknown keys an error, --set overrides."""

import subprocess
import sys

import pytest

from diffuma.training.config import (ConfigError, RunConfig, load_config, packaged_configs, parse_override,
                                     resolve_config)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_file_with_overrides_resolves_every_run_field(standin, tmp_path):
    p = _write(tmp_path, "model: {name: standin, preset: tiny, hidden: 4}\nrun: {epochs: 2, lr: 1e-3}\n")
    cfg = load_config(p, ["run.batch_size=8", "model.dropout=0.0", "run.ema_decay=0.99", "run.grad_clip=null"])
    assert cfg["model"] == {"name": "standin", "preset": "tiny", "hidden": 4, "dropout": 0.0}
    run = cfg["run"]
    assert set(run) == set(RunConfig.model_fields)
    assert run["epochs"] == 2 and run["lr"] == 1e-3 and isinstance(run["lr"], float)  # YAML "1e-3" is a str
    assert run["batch_size"] == 8 and run["ema_decay"] == 0.99 and run["grad_clip"] is None
    assert run["schedule"] == "cosine"  # default filled in


@pytest.mark.parametrize("text, overrides, message", [
    # unknown keys: did-you-mean, or the known names
    ("model: {name: standin}\nrun: {epocs: 2}\n", [], r"^\S*c\.yaml: run\.epocs: unknown key \(did you mean 'epochs'\?\)$"),
    ("model: {name: standin}\nruns: {}\n", [], r"c\.yaml: runs: unknown key \(did you mean 'run'\?\)$"),
    ("model: {name: standin, hiden: 3}\n", [], r"c\.yaml: model\.hiden: unknown key \(did you mean 'hidden'\?\)$"),
    ("model: {name: standin, preset: huge}\n", [], r"model\.preset: 'huge' is not a preset of standin"),
    ("model: {name: nosuchmodel}\n", [], r"c\.yaml: model\.name: unknown model 'nosuchmodel'"),
    ("model: {name: standim}\n", [], r"model\.name: unknown model 'standim' \(did you mean 'standin'\?\)"),
    ("run: {}\n", [], r"c\.yaml: model: is required"),
    # wrong types are refused, never coerced
    ("model: {name: standin}\nrun: {epochs: two}\n", [], r"c\.yaml: run\.epochs: must be an integer, got 'two'$"),
    ("model: {name: standin}\nrun: {epochs: 2.5}\n", [], r"run\.epochs: must be an integer, got 2\.5$"),
    ("model: {name: standin}\nrun: {lr: true}\n", [], r"run\.lr: must be a number, got True$"),
    ("model: {name: standin}\nrun: {eval_with_ema: 1}\n", [], r"run\.eval_with_ema: must be true or false, got 1$"),
    ("model: {name: standin, hidden: 4.0}\n", [], r"c\.yaml: model\.hidden: must be an integer, got 4\.0$"),
    ("model: {name: standin}\nrun: {betas: [0.9]}\n", [], r"run\.betas: has too few items \(1\), got \[0\.9\]"),
    ("model: {name: standin}\nrun: {betas: [0.9, '0.99']}\n", [], r"run\.betas\.1: must be a number"),
    ("model: {name: standin}\nrun: [1]\n", [], r"c\.yaml: run: must be a mapping, got \[1\]$"),
    # NaN / inf
    ("model: {name: standin}\nrun: {lr: .nan}\n", [], r"c\.yaml: run\.lr: must be a finite number, got nan$"),
    ("model: {name: standin}\nrun: {max_minutes: .inf}\n", [], r"run\.max_minutes: must be a finite number, got inf$"),
    # out of range / not a choice
    ("model: {name: standin}\nrun: {epochs: 0}\n", [], r"run\.epochs: must be > 0, got 0$"),
    ("model: {name: standin}\nrun: {schedule: linear}\n", [], r"run\.schedule: must be one of 'cosine', 'onecycle'"),
    ("model: {name: standin}\nrun: {ema_decay: 1.5}\n", [], r"run\.ema_decay: must be < 1, got 1\.5$"),
    ("model: {name: standin}\nrun: {min_lr_ratio: 2}\n", [], r"run\.min_lr_ratio: must be <= 1, got 2$"),
    ("model: {name: standin}\n", ["run.warmup_steps=-1"], r"^--set run\.warmup_steps=-1: run\.warmup_steps: must be >= 0"),
    # --set values are blamed on the option, not on the file
    ("model: {name: standin}\n", ["run.lr=abc"], r"^--set run\.lr=abc: run\.lr: must be a number, got 'abc'$"),
    ("model: {name: standin}\n", ["run.nope=1"], r"^--set run\.nope=1: run\.nope: unknown key"),
    ("model: {name: standin}\n", ["model.hidden=2.5"], r"^--set model\.hidden=2\.5: model\.hidden: must be an integer"),
    ("model: {name: diffuma, preset: tiny}\n", ["model.time_map=bogus"],
     r"^--set model\.time_map=bogus: model \(diffuma/tiny\): time_map must be one of shared, full, got 'bogus'$"),
    # a cross-field rule broken by a --set of the other field is blamed on that --set (it was blamed on the file)
    ("model: {name: diffuma, preset: tiny}\n", ["model.dit_heads=3"],
     r"^--set model\.dit_heads=3: model \(diffuma/tiny\): dit_dim \(64\) must be divisible by dit_heads \(3\)$"),
    ("model: {name: diffuma, preset: tiny}\n", ["model.prior=none"], r"^--set model\.prior=none: model \(diffuma/tiny\): "
                                                                     "learned_flow needs a prior"),
    ("model: {name: diffuma}\n", ["model.preset=tiny-mnist"],
     r"^--set model\.preset=tiny-mnist: model\.preset: 'tiny-mnist' is not a preset of diffuma \(did you mean 'tiny-mmnist'\?\)$"),
    # the model's name from --set is blamed on the option (it was blamed on the file), as is a seed NumPy refuses
    ("model: {name: standin}\n", ["model.name=nope"], r"^--set model\.name=nope: model\.name: unknown model 'nope'"),
    ("model: {name: standin}\n", ["model.name=3"], r"^--set model\.name=3: model\.name: must be a model name \(one of "),
    ("model: {name: standin}\n", ["run.seed=-1"], r"^--set run\.seed=-1: run\.seed: must be >= 0, got -1$"),
    ("model: {name: standin}\nrun: {seed: 4294967296}\n", [], r"c\.yaml: run\.seed: must be <= 4294967295"),
    ("model: {name: standin}\n", ["lr=1"], r"key must be model.<field> or run.<field>"),
    ("model: {name: standin}\n", ["run.lr"], r"expected key=value"),
    ("model: [1, 2\n", [], r"c\.yaml: malformed YAML"),
])
def test_invalid_configs_fail_with_one_clear_line(standin, tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(_write(tmp_path, text), overrides)
    assert "\n" not in str(e.value)


def test_yaml_numbers_without_a_dot_are_floats_and_ints_are_exact_floats(standin, tmp_path):
    run = load_config(_write(tmp_path, "model: {name: standin}\nrun: {lr: 3e-4, weight_decay: 0, betas: [0.9, 0.95]}\n"))["run"]
    assert run["lr"] == 3e-4 and run["weight_decay"] == 0.0 and isinstance(run["weight_decay"], float)
    assert run["betas"] == [0.9, 0.95]


def test_config_errors_come_before_torch_is_imported(tmp_path):
    """A bad run section is reported without importing torch (the model section needs the model)."""
    bad = _write(tmp_path, "model: {name: diffuma}\nrun: {lr: .nan}\n")
    code = ("import sys\nfrom diffuma.training.config import ConfigError, load_config\n"
            f"try:\n    load_config({str(bad)!r})\nexcept ConfigError as e:\n    print(e)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0].endswith("c.yaml: run.lr: must be a finite number, got nan") and out[1] == "False"


def test_packaged_configs_load_by_name_and_missing_ones_are_named():
    names = packaged_configs()
    assert {"diffuma_tiny", "diffuma_chdl", "diffuma_chdl_5to1", "diffuma_weatherbench"} <= set(names)
    with pytest.raises(ConfigError, match="nosuch: neither a config file nor a packaged config"):
        load_config("nosuch")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config("missing.yaml")


def test_parse_override_values_are_yaml():
    assert parse_override("run.betas=[0.9, 0.95]") == (["run", "betas"], [0.9, 0.95])
    assert parse_override("run.eval_with_ema=false") == (["run", "eval_with_ema"], False)
    assert parse_override("model.name=simvp") == (["model", "name"], "simvp")


def test_resolve_config_is_idempotent(standin):
    cfg = resolve_config({"model": {"name": "standin"}, "run": {"epochs": 1}})
    assert cfg["model"]["preset"] == "default"
    assert resolve_config(cfg) == cfg


def test_documented_example_config_is_valid(tmp_path):
    import re
    from pathlib import Path

    docs = (Path(__file__).parents[3] / "docs" / "training.md").read_text()
    block = re.search(r"```yaml\n(model:.*?)```", docs, re.S).group(1)
    cfg = load_config(_write(tmp_path, block))
    assert cfg["model"]["preset"] == "chdl-full" and cfg["run"]["lr"] == 5e-4

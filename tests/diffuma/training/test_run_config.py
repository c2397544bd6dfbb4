"""Config loading and validation: every field checked, unknown keys an error, --set overrides."""

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
    assert set(run) == set(RunConfig.__dataclass_fields__)
    assert run["epochs"] == 2 and run["lr"] == 1e-3 and isinstance(run["lr"], float)  # YAML "1e-3" is a str
    assert run["batch_size"] == 8 and run["ema_decay"] == 0.99 and run["grad_clip"] is None
    assert run["schedule"] == "cosine"  # default filled in


@pytest.mark.parametrize("text, overrides, message", [
    ("model: {name: standin}\nrun: {epocs: 2}\n", [], r"c\.yaml: unknown run key 'epocs' \(did you mean 'epochs'\?\)"),
    ("model: {name: standin}\nrun: {epochs: two}\n", [], r"run\.epochs must be int, got 'two'"),
    ("model: {name: standin}\nrun: {epochs: 0}\n", [], r"run\.epochs must be > 0"),
    ("model: {name: standin}\nrun: {lr: true}\n", [], r"run\.lr must be float"),
    ("model: {name: standin}\nrun: {schedule: linear}\n", [], r"run\.schedule must be one of cosine, onecycle"),
    ("model: {name: standin}\nrun: {ema_decay: 1.5}\n", [], r"run\.ema_decay must be in \(0, 1\)"),
    ("model: {name: standin}\nrun: {betas: [0.9]}\n", [], r"run\.betas must be a list of 2"),
    ("model: {name: standin}\nruns: {}\n", [], r"unknown top-level key 'runs'"),
    ("model: {name: standin, hiden: 3}\n", [], r"unknown model \(standin\) key 'hiden' \(did you mean 'hidden'\?\)"),
    ("model: {name: standin, preset: huge}\n", [], r"preset 'huge' is not a preset of standin"),
    ("model: {name: nosuchmodel}\n", [], r"unknown model name key 'nosuchmodel'"),
    ("run: {}\n", [], r"missing the 'model' section"),
    ("model: {name: standin}\n", ["run.warmup_steps=-1"], r"run\.warmup_steps must be >= 0"),
    ("model: {name: standin}\n", ["run.nope=1"], r"unknown run key 'nope'"),
    ("model: {name: standin}\n", ["lr=1"], r"key must be model.<field> or run.<field>"),
    ("model: {name: standin}\n", ["run.lr"], r"expected key=value"),
    ("model: [1, 2\n", [], r"c\.yaml: not valid YAML"),
    # NaN/inf name the key (torch would say "Invalid learning rate: nan"); a bad --set is blamed on the --set
    ("model: {name: standin}\nrun: {lr: .nan}\n", [], r"c\.yaml: run\.lr must be a finite number, got nan"),
    ("model: {name: standin}\nrun: {grad_clip: .inf}\n", [], r"run\.grad_clip must be a finite number, got inf"),
    ("model: {name: standin, dropout: .nan}\n", [], r"c\.yaml: model\.dropout must be a finite number"),
    ("model: {name: standin}\n", ["run.lr=abc"], r"^--set 'run\.lr=abc': run\.lr must be float, got 'abc'$"),
    ("model: {name: standin}\n", ["run.lr=nan"], r"^--set 'run\.lr=nan': run\.lr must be a finite number"),
    ("model: {name: standin}\n", ["model.dropout=.nan"], r"^--set 'model\.dropout=\.nan': model\.dropout must be a finite"),
    ("model: {name: standin}\n", ["run.epocs=2"], r"^--set 'run\.epocs=2': unknown run key 'epocs' \(did you mean"),
])
def test_invalid_configs_fail_with_one_clear_line(standin, tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text), overrides)


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

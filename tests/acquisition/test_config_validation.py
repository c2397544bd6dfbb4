"""The one config validator shared by the camera, curation and training configs."""

import re
from pathlib import Path

import pytest

from acquisition.config_validation import ConfigError, Float, StrictConfig, YamlTuple, load_yaml, validate

DOCS = Path(__file__).parents[2] / "docs"


class _Inner(StrictConfig):
    rate: float = 1.0


class _Cfg(StrictConfig):
    count: int = 1
    pair: YamlTuple[Float, Float] = (0.0, 1.0)
    inner: _Inner = _Inner()


def test_yaml_reads_exponent_floats_without_a_dot_and_runs_no_code():
    assert load_yaml("a: 1e-3\nb: -2E+2\nc: 1.5e3\nd: 12\ne: '1e-3'\n", "f") == \
        {"a": 1e-3, "b": -200.0, "c": 1500.0, "d": 12, "e": "1e-3"}
    with pytest.raises(ConfigError, match="^f: malformed YAML"):
        load_yaml("a: !!python/object/apply:os.system ['true']\n", "f")


def test_yaml_reads_numbers_as_yaml_1_2_not_1_1():
    """PyYAML's YAML 1.1 read `010` as octal 8 and `1:00` as base-60 60: a curate config's sequences_per_shard: 010
    was stored as 8 (and 09 refused). Now both stay strings, which the schemas refuse by name."""
    got = load_yaml("a: 010\nb: '1:00'\nc: 1:00\nd: 0x1F\ne: 1_000\nf: -0\ng: 2.\nh: 1:30.5\ni: .inf\n", "x")
    assert got == {"a": "010", "b": "1:00", "c": "1:00", "d": 31, "e": 1000, "f": 0, "g": 2.0, "h": "1:30.5",
                   "i": float("inf")}


def test_yaml_refuses_a_key_given_twice_naming_it_and_its_line():
    with pytest.raises(ConfigError, match=r"^f: malformed YAML \(duplicate key 'preset' at line 4, column 3\)$"):
        load_yaml("model:\n  name: diffuma\n  preset: tiny\n  preset: small\n", "f")
    with pytest.raises(ConfigError, match="duplicate key 'preset' at line 1"):
        load_yaml("model: {name: diffuma, preset: tiny, preset: small}\n", "f")
    # the same key in different mappings, and a merged anchor's key given again (an override), are fine
    assert load_yaml("a: {x: 1}\nb: {x: 2}\n", "f") == {"a": {"x": 1}, "b": {"x": 2}}
    assert load_yaml("a: &a {x: 1}\nb:\n  <<: *a\n  x: 3\n", "f") == {"a": {"x": 1}, "b": {"x": 3}}


@pytest.mark.parametrize("data, blame, message", [
    ({"count": 1.0}, None, "f.yaml: count: must be an integer, got 1.0"),
    ({"pair": [1, 2]}, None, None),  # a YAML list is a tuple; ints are exact floats
    ({"pair": [1, True]}, None, "f.yaml: pair.1: must be a number, got True"),
    ({"pair": [1]}, None, "f.yaml: pair: has too few items (1), got [1]"),  # (it said "pair.1: is required")
    ({"pair": [1, 2, 3]}, None, "f.yaml: pair: must have 2 items, got [1, 2, 3]"),
    ({"inner": {"rat": 2.0}}, None, "f.yaml: inner.rat: unknown key (did you mean 'rate'?)"),
    ({"inner": {"rate": float("nan")}}, {("inner", "rate"): "--set inner.rate=nan"},
     "--set inner.rate=nan: inner.rate: must be a finite number, got nan"),
])
def test_errors_are_one_line_with_file_or_option_and_dotted_key(data, blame, message):
    if message is None:
        assert validate(_Cfg, data, "f.yaml").pair == (1.0, 2.0)
        return
    with pytest.raises(ConfigError) as e:
        validate(_Cfg, data, "f.yaml", blame=blame)
    assert str(e.value) == message


def test_documented_camera_config_is_valid(tmp_path):
    from acquisition.camera_config import load_camera_config

    block = re.search(r"```yaml\n(producers:.*?)```", (DOCS / "acquisition.md").read_text(), re.S).group(1)
    (tmp_path / "cameras.yaml").write_text(block)
    config = load_camera_config(tmp_path / "cameras.yaml")
    assert config.cameras["gige0"]["serial"] == "22470012" and config.cameras["sim0"]["backend"] == "sim"
    samples = load_camera_config(Path(__file__).parents[2] / "samples" / "cameras.yaml")
    assert samples.cameras["simqc"]["fault_rate"] == 0.03

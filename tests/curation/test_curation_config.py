"""The curation config (curation.config): strict types (no truncation), NaN refused, ranges, unknown keys
with a did-you-mean, one line naming the file and the dotted key; docs/curation.md's example loads."""

import re
from pathlib import Path

import pytest

from curation.config import ConfigError, CurateConfig, load_config

DOCS = Path(__file__).parents[2] / "docs" / "curation.md"


@pytest.mark.parametrize("text, message", [
    # unknown keys
    ("qc: {floors: {sharpnes: 0.1}}", "qc.floors.sharpnes: unknown key (did you mean 'sharpness'?)"),
    ("max_bad_frame: 1", "max_bad_frame: unknown key (did you mean 'max_bad_frames'?)"),
    ("zzz: 1", "zzz: unknown key (known: frames_per_sequence, in_frames, max_bad_frames, out_frames, qc, "
               "sequences_per_shard, split, thumbnail_width)"),
    # wrong types: refused, never truncated or converted
    ("max_bad_frames: 2.9", "max_bad_frames: must be an integer, got 2.9"),
    ("sequences_per_shard: 1.5", "sequences_per_shard: must be an integer, got 1.5"),
    ("qc: {floors: {sharpness: true}}", "qc.floors.sharpness: must be a number, got True"),
    ("split: {seed: '3'}", "split.seed: must be an integer, got '3'"),
    ("split: 2", "split: must be a mapping, got 2"),
    # NaN / inf
    ("qc: {floors: {sharpness: .nan}}", "qc.floors.sharpness: must be a finite number, got nan"),
    ("qc: {z: .inf}", "qc.z: must be a finite number, got inf"),  # the key written, not the score it was copied to
    ("qc: {z: -1}", "qc.z: must be in [0, 1e+06], got -1"),
    # beyond "never flag": overflowed float32 in the report after every shard was written
    ("qc: {floors: {sharpness: 1.7e308}}", "qc.floors.sharpness: must be <= 1e+06, got 1.7e+308"),
    ("thumbnail_width: 20000", "thumbnail_width: must be <= 1024, got 20000"),  # a 168 MB report at 3 frames/s
    # YAML 1.1's octal and base-60 integers are not read as numbers (010 was 8, 1:00 was 60)
    ("sequences_per_shard: 010", "sequences_per_shard: must be an integer, got '010'"),
    ("max_bad_frames: 1:00", "max_bad_frames: must be an integer, got '1:00'"),
    # out of range, and the rules that relate fields
    ("split: {val_fraction: 1.5}", "split.val_fraction: must be <= 1, got 1.5"),
    ("qc: {floors: {banding: -0.1}}", "qc.floors.banding: must be >= 0, got -0.1"),
    ("sequences_per_shard: 0", "sequences_per_shard: must be >= 1, got 0"),
    ("in_frames: 8", "in_frames: in_frames + out_frames (8 + 5) exceeds frames_per_sequence (10)"),
    ("max_bad_frames: 9", "max_bad_frames: max_bad_frames (9) must be <= frames_per_sequence - 2 (8)"),
    # the key named is one the file set (frames_per_sequence alone was reported against in_frames)
    ("frames_per_sequence: 3", "frames_per_sequence: in_frames + out_frames (5 + 5) exceeds frames_per_sequence (3)"),
    ("{frames_per_sequence: 6, in_frames: 2}", "in_frames: in_frames + out_frames (2 + 5) exceeds frames_per_sequence (6)"),
    ("out_frames: 6", "out_frames: in_frames + out_frames (5 + 6) exceeds frames_per_sequence (10)"),
    ("{frames_per_sequence: 3, in_frames: 1, out_frames: 1}", "frames_per_sequence: max_bad_frames (2) must be <= "
                                                              "frames_per_sequence - 2 (1)"),
    ("qc: {z: \"3\"}", "qc.z: must be a number (for all six scores) or a mapping of score to number, got '3'"),
    ("qc: [\n", "malformed YAML"),
])
def test_bad_settings_are_one_line_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "qc.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: [^\n]*{re.escape(message)}[^\n]*$"):
        load_config(path)


def _write(path, text):
    path.write_text(text)
    return path


def test_partial_overrides_keep_the_other_defaults(tmp_path):
    path = tmp_path / "qc.yaml"
    path.write_text("qc: {floors: {sharpness: 0.12}, z: 5}\nsplit: {seed: 3}\n")
    cfg = load_config(path)
    assert cfg.qc.floors["sharpness"] == 0.12 and cfg.qc.z.values() == [5.0] * 6  # a scalar z sets every score's
    assert all(isinstance(v, float) for v in cfg.qc.z.values())
    one = load_config(_write(tmp_path / "one.yaml", "qc: {z: {misregistration_px: 20}}"))
    assert one.qc.z["misregistration_px"] == 20.0 and one.qc.z["banding"] == CurateConfig().qc.z["banding"]
    assert cfg.qc.floors["banding"] == CurateConfig().qc.floors["banding"] and cfg.split.val_fraction == 0.5
    assert cfg.to_dict()["qc"]["floors"] == {**CurateConfig().to_dict()["qc"]["floors"], "sharpness": 0.12}
    assert load_config(None) == CurateConfig()


def test_the_documented_example_config_loads_and_equals_the_defaults(tmp_path):
    block = re.search(r"```yaml\n(qc:.*?)```", DOCS.read_text(), re.S).group(1)
    path = tmp_path / "qc.yaml"
    path.write_text(block)
    assert load_config(path) == CurateConfig()

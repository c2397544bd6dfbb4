"""The camera config file: producers, aliases, and one-line errors naming the file."""

import pytest

from acquisition.backends import resolve_alias
from acquisition.backends.base import CameraError
from acquisition.camera_config import load_camera_config, viky_cti


def test_viky_and_relative_producers_resolve(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "cameras.yaml"
    path.write_text("producers: [viky, vendor/x.cti]\ncameras:\n  gige0: {serial: '1234'}\n  sim3: {backend: sim, seed: 7}\n")
    config = load_camera_config(path, extra_producers=("viky",))
    assert config.producers[0] == viky_cti()
    assert str(tmp_path / "cfg" / "vendor" / "x.cti") in config.producers
    assert config.producers.count(viky_cti()) == 1  # named on the command line and in the file: loaded once
    assert config.cameras["gige0"] == {"serial": "1234"}
    assert resolve_alias("gige0", config) == ("gentl", {"serial": "1234"})
    assert resolve_alias("sim3", config) == ("sim", {"backend": "sim", "seed": 7})


def test_env_var_location(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("cameras:\n  cam: {user_name: left}\n")
    monkeypatch.setenv("CHDL_CAMERAS", str(path))
    assert load_camera_config().cameras == {"cam": {"user_name": "left"}}


def test_no_config_file_and_fallback_aliases(tmp_path, monkeypatch):
    monkeypatch.delenv("CHDL_CAMERAS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = load_camera_config()
    assert config.cameras == {} and config.source == "no camera config file"
    assert resolve_alias("gige2", config) == ("gentl", {"fallback": "GEV", "index": 2})
    assert resolve_alias("u3v0", config) == ("gentl", {"fallback": "U3V", "index": 0})
    assert resolve_alias("sim1", config) == ("sim", {"index": 1})
    with pytest.raises(CameraError, match="unknown camera alias 'front'"):
        resolve_alias("front", config)


@pytest.mark.parametrize("text,problem", [
    ("cameras: [unclosed", "malformed YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("cameras:\n  cam0: {producer: x.cti}\n", "needs one of serial, user_name, address"),
    ("producers: x.cti\n", "producers: must be a list, got 'x.cti'"),
    ("camera: {}\n", "camera: unknown key (did you mean 'cameras'?)"),
    # strict types: a serial YAML reads as a number is refused, not silently stringified
    ("cameras:\n  cam0: {serial: 22470012}\n", "cameras.cam0.serial: must be a string, got the number 22470012 "
                                                "(YAML reads unquoted digits as a number: put the value in quotes"),
    # the advice does not repeat YAML's reading (1e3 is 1000.0: quoting "1000.0" would pin another camera)
    ("cameras:\n  cam0: {serial: 1e3}\n", "got the number 1000.0 (YAML reads unquoted digits as a number: put the value "
                                           "in quotes exactly as written, e.g. serial: \"0012\")"),
    ("cameras:\n  cam0: {serail: '1'}\n", "cameras.cam0.serail: unknown key (did you mean 'serial'?)"),
    ("cameras:\n  cam0: {backend: aravis, adress: 10.0.0.2}\n", "cameras.cam0.adress: unknown key (did you mean 'address'?)"),
    ("cameras:\n  cam0: {serial: '1', trigger_line: 1}\n", "cameras.cam0.trigger_line: must be a string"),
    ("cameras:\n  cam0: nope\n", "cameras.cam0: must be a mapping, got 'nope'"),
    ("cameras:\n  cam0: {backend: warp, serial: '1'}\n", None),
    # the simulator's entries are checked against its options too (they used to fail only when capturing)
    ("cameras:\n  cam0: {backend: sim, seed: 1.5}\n", "cameras.cam0.seed: must be an integer, got 1.5"),
    ("cameras:\n  cam0: {backend: sim, fault_rat: 0.1}\n", "cameras.cam0.fault_rat: unknown key (did you mean 'fault_rate'?)"),
    ("cameras:\n  cam0: {backend: sim, realtime: 'no'}\n", "cameras.cam0.realtime: must be"),
    # ... and their ranges, named by file and key (were "camera 'cam0': ..." at capture, and index -1 blamed the seed)
    ("cameras:\n  cam0: {backend: sim, bit_depth: 20}\n", "cameras.cam0.bit_depth: must be 12 or 16 (the Mono16"),
    ("cameras:\n  cam0: {backend: sim, fault_rate: 2}\n", "cameras.cam0.fault_rate: must be in [0, 1], not 2"),
    ("cameras:\n  cam0: {backend: sim, index: -1}\n", "cameras.cam0.index: must be >= 0, not -1"),
    ("cameras:\n  cam0: {backend: sim, lanes_per_wafer: 0}\n", "cameras.cam0.lanes_per_wafer: must be >= 1, not 0"),
    ("cameras:\n  cam0: {backend: sim, anomaly_kinds: [foo]}\n", "cameras.cam0.anomaly_kinds: unknown anomaly kinds"),
])
def test_bad_config_names_file(tmp_path, text, problem):
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    if problem is None:  # loads, but the backend is unknown when the alias is used
        with pytest.raises(CameraError, match=rf"{path}: camera 'cam0' has unknown backend 'warp'"):
            resolve_alias("cam0", load_camera_config(path))
        return
    with pytest.raises(CameraError) as e:
        load_camera_config(path)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value) and "\n" not in str(e.value)


def test_sim_options_pass_through_to_the_backend_once_checked(tmp_path):
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras:\n  s: {backend: sim, seed: 3, fault_rate: 0.05, fault_kinds: [blur]}\n")
    assert load_camera_config(path).cameras == {"s": {"backend": "sim", "seed": 3, "fault_rate": 0.05,
                                                      "fault_kinds": ["blur"]}}


def test_missing_config_file(tmp_path):
    with pytest.raises(CameraError, match="camera config not found"):
        load_camera_config(tmp_path / "nope.yaml")

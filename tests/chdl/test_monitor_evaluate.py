"""monitor-eval's operating point: the scorer's hysteresis replayed on z levels, false alarms per hour."""

import math

from chdl.monitor.evaluate import FPS, operating_point, replay_alerts as _replay


def replay_alerts(rows, z_on, z_off):
    """The number of alerts raised."""
    return sum(r["new_alert"] for r in _replay(rows, z_on, z_off))


def _rows(zs, lane=0, run="r", flagged=()):
    return [{"run": run, "lane": lane, "frame": i, "z": z, "acquisition": "vibration" if i in flagged else None}
            for i, z in enumerate(zs)]


def test_replay_alerts_follows_the_scorers_hysteresis():
    rows = _rows([math.nan, 1, 7, 8, 4, 2, 7, 3.5, 9])  # on at 7, held at 8 and 4, off at 2, on at 7, held
    assert replay_alerts(rows, 6, 3) == 2
    assert replay_alerts(rows, 6, 5) == 3  # a higher off level: the 4 ends the first alert, the 9 raises a third
    assert replay_alerts(rows, 10, 5) == 0
    # a new lane pass starts with the alert off; a frame the acquisition QC flagged raises none
    assert replay_alerts(_rows([7, 4]) + _rows([4, 7], lane=1), 6, 3) == 2
    assert replay_alerts(_rows([1, 9, 1], flagged={1}), 6, 3) == 0
    assert replay_alerts(_rows([9, 9], run="a") + _rows([9], run="b"), 6, 3) == 2  # runs are separate too
    assert [r["alert"] for r in _replay(_rows([1, 7, 4, 2]), 6, 3)] == [False, True, True, False]


def test_operating_point_picks_the_lowest_level_that_stays_under_the_target():
    # 36 frames = 7.2 s at 5 fps: one false alarm is 500 per hour
    rows = _rows([1.0] * 30 + [4.5, 1.0, 5.5, 1.0, 9.0, 1.0])
    op = operating_point(rows, [4, 5, 6, 8, 10], fa_per_hour=500)
    hours = 36 / FPS / 3600
    assert math.isclose(op["clean_hours"], hours) and math.isclose(op["one_alarm_per_hour"], 1 / hours)
    assert [t["false_alarms"] for t in op["levels"]] == [3, 2, 1, 1, 0]
    assert op["chosen_z_on"] == 6 and op["levels"][0]["z_off"] == 2
    assert operating_point(rows, [4, 5], fa_per_hour=500)["chosen_z_on"] is None
    assert operating_point(rows, [4, 5, 6, 8, 10], fa_per_hour=0)["chosen_z_on"] == 10


class _Mixture:
    """Stands for a LearnedScorer: the mixture's z is the first feature, the tests' z's the last two."""
    score_median, score_sigma = 0.0, 1.0

    def nll(self, f):
        return f[0]

    def test_z(self, f):
        return f[-2:]


def test_learned_operating_point_weights_each_test_by_the_two_levels():
    from chdl.monitor.evaluate import learned_operating_point

    def rows(mix, splash, crack):
        return [{"run": "r", "lane": 0, "frame": i, "acquisition": None, "features": [m, 0, 0, 0, 0, 0, s, c]}
                for i, (m, s, c) in enumerate(zip(mix, splash, crack))]

    quiet = [1.0] * 30
    # one mixture spike of 5.5, one splash spike of 11 and one crack spike of 5.5: alone they need levels 6, 12
    # and 6, so the splash test weighs 0.5, the crack test 1, and all spikes are 5.5 in the combined z, which
    # level 6 keeps quiet
    op = learned_operating_point(rows(quiet + [5.5, 1, 1, 1, 1], quiet + [1, 1, 11, 1, 1], quiet + [1, 1, 1, 1, 5.5]),
                                 _Mixture(), [4, 5, 6, 8, 10, 12], fa_per_hour=0)
    assert (op["mixture"]["chosen_z_on"], op["tests"]["splash_area"]["chosen_z_on"], op["tests"]["crack_length"]["chosen_z_on"],
            op["test_gains"], op["chosen_z_on"]) == (6, 12, 6, [0.5, 1.0], 6)
    assert [t["false_alarms"] for t in op["levels"]] == [3, 3, 0, 0, 0, 0]
    # a splash spike above every level: no splash level, that test stays off and the others' level stands
    off = learned_operating_point(rows(quiet + [5.5], quiet + [20], quiet + [1]), _Mixture(), [4, 6, 12], fa_per_hour=0)
    assert off["test_gains"] == [None, 6.0 / 4] and off["chosen_z_on"] == off["mixture"]["chosen_z_on"] == 6


def test_each_method_s_plot_axis_names_its_own_score():
    """The frame-difference panel said "largest block z" over log10 whole-frame MSE values."""
    from chdl.monitor.evaluate import score_unit

    assert score_unit("frame-difference") == "score: log10 whole-frame MSE vs the previous frame"
    assert score_unit("constant-motion") == "score: largest block z of the error"
    assert score_unit("constant-motion+scorer:s.json") == "score: −log density of the error features"

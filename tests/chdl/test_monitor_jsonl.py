"""chdl.monitor.jsonl: following a monitor folder's .jsonl files while they are written."""

import logging

from chdl.monitor.jsonl import JsonlTail


def test_jsonl_tail_reads_new_lines_once_and_skips_a_malformed_one(tmp_path, caplog):
    path = tmp_path / "scores.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []  # not written yet
    path.write_text('{"frame": 0}\nnot json\n[1, 2]\n{"frame": 1}\n{"frame"')
    with caplog.at_level(logging.WARNING):
        assert tail.read() == [{"frame": 0}, {"frame": 1}]
    assert f"{path}: line 2: not a JSON object" in caplog.text and f"{path}: line 3:" in caplog.text
    assert tail.read() == []
    with open(path, "a") as f:
        f.write(': 2}\n{"frame": 3}\n')
    assert tail.read() == [{"frame": 2}, {"frame": 3}]
    assert tail.offset == path.stat().st_size

"""chdl.monitor.jsonl: following a monitor folder's .jsonl files while they are written."""

import json
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


def test_the_last_lines_are_found_from_the_end_whatever_the_block(tmp_path):
    """The dashboard's ?last=N parsed all of scores.jsonl (an 8-hour run: 1.9 s and 175 MB a request); tail_offset
    finds where the last N complete lines begin by reading blocks backwards, a partial last line not counted."""
    from chdl.monitor.jsonl import read_jsonl, tail_offset

    path = tmp_path / "scores.jsonl"
    assert tail_offset(path, 3) == 0 and read_jsonl(path, last=3) == []  # absent
    lines = [f'{{"frame": {i}, "pad": "{"x" * (i % 7)}"}}\n' for i in range(50)]
    path.write_text("".join(lines) + '{"frame": 50, "pa')  # the monitor mid-write
    whole = "".join(lines)
    for block in (1, 5, 64, 1 << 16):
        for n in (1, 2, 49):
            assert tail_offset(path, n, block) == len(whole.encode()) - len("".join(lines[-n:]).encode()), (block, n)
        assert tail_offset(path, 50, block) == 0 and tail_offset(path, 80, block) == 0
    assert [r["frame"] for r in read_jsonl(path, last=3)] == [47, 48, 49]
    assert len(read_jsonl(path)) == 50


def test_jsonl_tail_reads_a_file_rewritten_shorter_from_the_start(tmp_path, caplog):
    """A scores.jsonl truncated and written again (a monitor restarted into the same folder) is shorter than the
    offset reached: the tail starts over at its beginning instead of waiting past its end for ever."""
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(f'{{"frame": {i}, "pad": "xxxxxxxx"}}\n' for i in range(5)))
    tail = JsonlTail(path)
    assert len(tail.read()) == 5
    path.write_text('{"frame": 0}\n')
    with caplog.at_level(logging.WARNING):
        assert tail.read() == [{"frame": 0}]
    assert "shrank" in caplog.text and tail.offset == path.stat().st_size and tail.line == 1
    with open(path, "a") as f:
        f.write('{"frame": 1}\n')
    assert tail.read() == [{"frame": 1}]


def test_jsonl_tail_takes_a_line_longer_than_a_chunk_whole(tmp_path):
    """A record longer than the chunk a read takes (CHUNK_BYTES) has no newline within it: the tail took
    nothing and never moved on; it reads that line whole, and the short record after it comes too."""
    from chdl.monitor.jsonl import CHUNK_BYTES

    path = tmp_path / "scores.jsonl"
    long = {"frame": 0, "pad": "x" * (CHUNK_BYTES + 100)}
    path.write_text(json.dumps(long) + '\n{"frame": 1}\n')
    tail = JsonlTail(path)
    got = tail.read() + tail.read()
    assert got == [long, {"frame": 1}] and tail.offset == path.stat().st_size
    small = JsonlTail(path)  # the same with a small chunk
    assert small.read(max_bytes=64) + small.read(max_bytes=64) == [long, {"frame": 1}]

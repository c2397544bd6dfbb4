"""acquisition.files: the one way chdl replaces a file (whole or not at all, errors naming the user's file)."""

import errno
import os

import pytest

from acquisition import files


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    files.write_text(path, "new ü")
    files.write_bytes(tmp_path / "frame.png", b"\x89PNG", durable=True)
    assert path.read_text(encoding="utf-8") == "new ü" and (tmp_path / "frame.png").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.png", "report.json"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_write_stopped_half_way_keeps_the_old_file(tmp_path, stop):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old checkpoint")
    with pytest.raises(stop):
        with files.replacing(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise stop()
    assert path.read_bytes() == b"old checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_an_oserror_names_the_file_asked_for_not_the_temporary(tmp_path):
    """A folder where the file should go: the rename fails; the error names that path, keeps its errno."""
    (tmp_path / "x.png").mkdir()
    with pytest.raises(OSError) as e:
        files.write_bytes(tmp_path / "x.png", b"data")
    assert e.value.filename == str(tmp_path / "x.png") and e.value.errno == errno.EISDIR
    assert ".tmp" not in str(e.value) and [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_a_full_disk_without_a_file_name_is_named_too(tmp_path):
    with pytest.raises(OSError) as e:
        with files.replacing(tmp_path / "status.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "status.json")


def test_an_error_about_another_file_keeps_its_own_name(tmp_path):
    """Reading an input inside the block fails: that input is the file to name, not the output."""
    with pytest.raises(FileNotFoundError) as e:
        with files.replacing(tmp_path / "copy.pt") as tmp:
            tmp.write_bytes((tmp_path / "missing.pt").read_bytes())
    assert e.value.filename == str(tmp_path / "missing.pt")


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    keep = ["last.pt", ".lock", ".last.pt.tmp", "notes.tmp12", ".x.tmp12a"]
    stale = [".last.pt.tmp4242", ".config.yaml.tmp7"]
    for name in keep + stale:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.tmp99").mkdir()  # a folder is not a file write's temporary
    assert sorted(p.name for p in files.remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [".dir.tmp99"])
    assert files.remove_stale_temporaries(tmp_path / "absent") == []


def test_the_temporary_sits_beside_the_file_and_names_this_process(tmp_path):
    tmp = files.temporary_path(tmp_path / "a.json")
    assert tmp.parent == tmp_path and tmp.name == f".a.json.tmp{os.getpid()}"
    assert files.TEMPORARY_NAME.fullmatch(tmp.name)


def test_write_text_escapes_a_name_of_another_encoding(tmp_path):
    """A Latin-1 file name decodes to a surrogate escape, which UTF-8 cannot encode: the report that named one
    failed after all the work; it is written as a backslash escape."""
    files.write_text(tmp_path / "r.html", "run lat\udce4 done")
    assert (tmp_path / "r.html").read_bytes() == b"run lat\\udce4 done"


def test_cannot_create_names_the_file_in_the_way(tmp_path):
    """A file (or a broken symlink) where an output folder must go: the OS says "File exists" or "Not a directory"
    and the commands said that (train, capture, curate, eval each in other words); now the file is named."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for parent, kind in (("afile", "a file"), ("dangling", "a broken symlink")):
        target = tmp_path / parent / "run" / "frames"
        with pytest.raises(OSError) as e:
            target.mkdir(parents=True)
        assert files.file_in_the_way(target) == tmp_path / parent
        assert files.cannot_create(target, e.value) == f": {tmp_path / parent} is {kind}, not a folder"
    with pytest.raises(OSError) as e:
        os.mkdir(tmp_path / "a" / "b")  # no file in the way: the OS's own reason
    assert files.cannot_create(tmp_path / "a" / "b", e.value) == " (No such file or directory)"

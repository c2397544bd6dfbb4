"""Parameter types shared by the chdl commands (chdl/cli/options.py)."""

from pathlib import Path

from click.testing import CliRunner


def test_output_paths_follow_a_symlink_and_expand_a_quoted_home(tmp_path, monkeypatch):
    """Every --out of chdl (chdl.cli.options.OutputPath): a symlink is written through to its folder (predict
    --overwrite into a linked folder failed after all its work, "Cannot call rmtree on a symbolic link"; curate
    and import replaced the link), a dangling one too (capture said "File exists"); "~/x" is the home folder."""
    import click

    from chdl.cli.options import OutputPath

    @click.command()
    @click.option("--out", type=OutputPath(path_type=Path))
    def cmd(out):
        click.echo(str(out))

    (tmp_path / "big").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "big")
    (tmp_path / "dangling").symlink_to(tmp_path / "big" / "new")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for given, expect in [(tmp_path / "link", tmp_path / "big"), (tmp_path / "dangling", tmp_path / "big" / "new"),
                          ("~/x", tmp_path / "home" / "x"), (tmp_path / "plain", tmp_path / "plain")]:
        r = CliRunner().invoke(cmd, ["--out", str(given)])
        assert r.exit_code == 0 and r.output.strip() == str(expect), (given, r.output)


def test_an_output_under_a_file_is_one_line_naming_the_file(tmp_path):
    """capture said "afile/r/sim-200x150/frames: Not a directory", curate and eval "(File exists)", contact-sheet
    "the folder afile does not exist"; import --out afile suggested --overwrite, which then refused."""
    from chdl.cli import main

    samples = Path(__file__).resolve().parents[2] / "samples" / "sim-200x150"
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(main, ["capture", "--replay", str(samples), "--out", str(tmp_path / "afile" / "r"),
                                  "--as-fast-as-possible", "-q"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"Error: {tmp_path / 'afile' / 'r' / 'sim-200x150' / 'frames'}: cannot create the folder: "
        f"{tmp_path / 'afile'} is a file, not a folder"], r.output
    r = CliRunner().invoke(main, ["simulate", "contact-sheet", str(tmp_path / "afile" / "x.png")])
    assert r.exit_code == 2 and f"the folder {tmp_path / 'afile'} is a file, not a folder" in r.output, r.output
    r = CliRunner().invoke(main, ["import", "mnist", "--out", str(tmp_path / "afile"), "--train", "1", "--val", "0"])
    assert r.exit_code == 1 and "exists and is not a zarr dataset" in r.output and "use --overwrite" not in r.output
    r = CliRunner().invoke(main, ["curate", str(samples), str(tmp_path / "afile" / "x.zarr"), "-q"])
    assert r.exit_code == 1 and r.output.strip() == (f"Error: {tmp_path / 'afile' / 'x.zarr'}: cannot create the "
                                                     f"folder it goes in: {tmp_path / 'afile'} is a file, not a folder")


def test_an_output_name_too_long_for_the_working_files_beside_it_is_refused_first(tmp_path):
    """A 245-byte name is valid on Linux, but `.<name>.chdl-writer.lock` is not: curate and predict failed with
    "cannot write in . (File name too long)"."""
    from chdl.cli import main
    from chdl.cli.options import NAME_MAX, WORKING_NAME_EXTRA

    longest = NAME_MAX - WORKING_NAME_EXTRA
    name = "a" * (longest + 1 - len(".zarr")) + ".zarr"
    r = CliRunner().invoke(main, ["curate", str(tmp_path), str(tmp_path / name), "-q"])
    assert r.exit_code == 2 and f"the name is {longest + 1} bytes; chdl's working files beside an output " \
        f"(.<name>.chdl-writer.lock) need it to be at most {longest}" in r.output, r.output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ("b" * longest)).with_name("." + "b" * longest + ".chdl-writer.lock").touch()  # the longest fits

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

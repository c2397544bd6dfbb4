"""The README's set-up commands are the ones CI and the quickstart really run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in l and not l.startswith("#")]
    assert len(ci_lines) == 1
    assert ci_lines[0].strip() in readme


def test_readme_scripts_exist():
    readme = (ROOT / "README.md").read_text()
    for script in ("tools/install.sh", "tools/quickstart.sh"):
        assert f"bash {script}" in readme
        assert (ROOT / script).is_file(), script

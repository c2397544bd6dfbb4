"""The project's environment is consistent: every installed package's declared requirements are met."""

import subprocess
import sys


def test_pip_check_passes():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

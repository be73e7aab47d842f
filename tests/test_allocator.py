"""The allocator settings: applied once on Linux/glibc, and skipped when asked."""

from __future__ import annotations

import subprocess
import sys

CHECK = "from fsl_app.allocator import tune_allocator; print(tune_allocator(), tune_allocator())"


def run(env_value: str | None) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    if env_value is not None:
        env["FSL_APP_TUNE_MALLOC"] = env_value
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout.strip()


def test_tuned_on_linux_once_and_off_when_asked():
    expected = "True True" if sys.platform.startswith("linux") else "False False"
    assert run(None) == expected
    assert run("0") == "False False"

"""The command line answers ``--help`` and argument errors without importing torch & co.

Each check runs in a fresh interpreter: the test process has imported everything already.
The learner registry (``fsl_app.learners``) is measured on its own and allowed, for as long
as importing it still loads torch; everything else the parser reads must be light.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "timm", "sklearn", "scipy", "torchvision")

REPORT = """
import json, sys
{setup}
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def heavy_modules_after(setup: str) -> set[str]:
    code = REPORT.format(setup=setup, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.fixture(scope="module")
def registry_imports() -> set[str]:
    return heavy_modules_after("import fsl_app.learners")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["predict", "--help"], ["predict", "--query"], ["no-such-command"]],
    ids=["help", "predict-help", "argument-error", "unknown-command"],
)
def test_the_parser_imports_nothing_heavy(argv, registry_imports):
    setup = (
        "from fsl_app.cli import build_parser\n"
        "try:\n"
        f"    build_parser().parse_args({argv!r})\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert heavy_modules_after(setup) <= registry_imports


def test_meta_train_options_are_built_when_it_runs():
    """meta-train's defaults come from the trainers: its options appear when it is parsed."""
    from fsl_app.cli import build_parser

    args = build_parser().parse_args(["meta-train", "--dataset", "tuxpaint", "--ways", "3"])
    assert args.ways == 3 and args.algorithm == "maml" and args.inner_steps >= 1

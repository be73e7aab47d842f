"""Command line start-up: how long ``python -m fsl_app`` takes before it answers.

Targets: ``--help``, ``predict --help`` and an argument error in under half the time of
``python -c "import torch"`` alone (they import no torch, timm, scikit-learn or scipy); a
``predict`` whose embeddings are all cached builds no backbone model.

Each command runs as a fresh process, all of them side by side in every round so that noise
from other work on the machine hits them alike; the table shows the median of the rounds.
``predict`` runs on a small real folder (Tux Paint photos: 3 classes x 3 examples, 3 queries)
with an empty cache (cold), then again with the same cache (cached).

    python benchmarks/cli_startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsl_app.datasets import tuxpaint_photos  # noqa: E402

HEAVY = ("torch", "timm", "sklearn", "scipy")
CLASSES = {"animal": "animals", "food": "food", "plant": "plants"}
SHOTS, QUERIES_PER_CLASS = 3, 1


def make_folders(root: Path) -> tuple[Path, Path]:
    """support/<class>/*.png (3 x 3) and query/*.png (3), copied from Tux Paint's photos."""
    support, query = root / "support", root / "query"
    query.mkdir(parents=True)
    for name, files in tuxpaint_photos(CLASSES).items():
        (support / name).mkdir(parents=True)
        for i, path in enumerate(files[:SHOTS]):
            shutil.copy(path, support / name / f"{i}{path.suffix}")
        for path in files[SHOTS : SHOTS + QUERIES_PER_CLASS]:
            shutil.copy(path, query / f"{name}-{path.name}")
    return support, query


def timed(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, exit status and stderr of one fresh process."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, done.stderr


def heavy_imports(command: list[str], env: dict[str, str]) -> str:
    """Which of torch, timm, scikit-learn and scipy the command imports (from -X importtime)."""
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    return ", ".join(name for name in HEAVY if name in modules) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="fsl-cli-startup-") as tmp:
        support, query = make_folders(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        predict = [python, "-m", "fsl_app", "predict", "--support", str(support)]
        predict += ["--query", str(query)]
        quick = {
            "python -c 'import torch'": [python, "-c", "import torch"],
            "--help": [python, "-m", "fsl_app", "--help"],
            "predict --help": [python, "-m", "fsl_app", "predict", "--help"],
            "argument error": [python, "-m", "fsl_app", "predict", "--query"],
        }
        times: dict[str, list[float]] = {name: [] for name in [*quick, "predict (cold)"]}
        times["predict (cached)"] = []
        for _ in range(args.rounds):
            for name, command in quick.items():
                times[name].append(timed(command, env)[0])
            cache = Path(tmp) / f"cache-{len(times['predict (cold)'])}.sqlite"
            predict_env = {**env, "FSL_APP_CACHE": str(cache)}
            for name in ("predict (cold)", "predict (cached)"):
                seconds, status, stderr = timed(predict, predict_env)
                if status != 0:
                    sys.exit(f"{name} failed ({status}):\n{stderr}")
                times[name].append(seconds)
        imports = {name: heavy_imports(command, env) for name, command in quick.items()}
        imports["predict (cached)"] = heavy_imports(predict, predict_env)
    torch_alone = statistics.median(times["python -c 'import torch'"])
    rows = [("command", "median s", "x import torch", "heavy imports")]
    for name, values in times.items():
        median = statistics.median(values)
        rows.append((name, f"{median:.2f}", f"{median / torch_alone:.2f}", imports.get(name, "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"median of {args.rounds} rounds, {os.cpu_count()} CPUs")
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print("target: --help, predict --help and argument error under 0.5x import torch")


if __name__ == "__main__":
    main()

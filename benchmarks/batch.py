"""Batch prediction: throughput beside the bare backbone, and memory for 1k vs 10k images.

Targets: ``batch-predict --engine local`` at >= 0.85x the images/s of the backbone's forward
pass alone (same images, already decoded and preprocessed, same batch size), and peak memory
flat in the number of images (10k within 10% of 1k).

Images: Tux Paint's real photos (PNG), linked under new names until there are enough, so that
every file is read, decoded and embedded (batch prediction keeps no embedding cache). Each
memory figure comes from a fresh process (its peak resident set size).

    python benchmarks/batch.py [--throughput-images 512] [--sizes 1000 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fsl_app.allocator import tune_allocator  # noqa: E402
from fsl_app.cli import main as cli  # noqa: E402
from fsl_app.datasets import tuxpaint_photos  # noqa: E402
from fsl_app.deploy.batch import BundlePredictor, run_local  # noqa: E402
from fsl_app.images import load_image  # noqa: E402

BATCH_SIZE = 32
TARGET_RATIO = 0.85
TARGET_MEMORY_GROWTH = 0.10


def make_folder(root: Path, n: int) -> Path:
    """``n`` image files under ``root`` (hard links to the photos, 500 per subfolder)."""
    photos = [p for files in tuxpaint_photos().values() for p in files]
    for i in range(n):
        folder = root / f"part{i // 500:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:06d}.png"
        if not target.exists():
            os.link(photos[i % len(photos)], target)
    return root


def make_bundle(tmp: Path) -> Path:
    support = tmp / "support"
    for name, files in tuxpaint_photos().items():
        (support / name).mkdir(parents=True)
        for photo in files[:5]:
            os.link(photo, support / name / photo.name)
    bundle = tmp / "model.fslbundle"
    cli(["export", "--support", str(support), "--out", str(bundle)])
    return bundle


def raw_forward_rate(predictor: BundlePredictor, folder: Path) -> float:
    """Images/s of the backbone alone on the images, decoded and preprocessed beforehand."""
    backbone = predictor.embedder.backbone
    files = sorted(folder.rglob("*.png"))
    pixels = torch.stack([backbone.transform(load_image(f).image) for f in files])
    started = time.perf_counter()
    for start in range(0, len(pixels), BATCH_SIZE):
        predictor.embedder._forward(pixels[start : start + BATCH_SIZE])
    return len(pixels) / (time.perf_counter() - started)


def local_rate(predictor: BundlePredictor, folder: Path, output: Path) -> float:
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    report = run_local(predictor, folder, output)
    return report.predicted / (time.perf_counter() - started)


def child(bundle: str, folder: str, output: str) -> None:
    """One whole batch-predict run in this process; prints its peak RSS in MB."""
    predictor = BundlePredictor(bundle, batch_size=BATCH_SIZE)
    started = time.perf_counter()
    report = run_local(predictor, folder, output)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{report.predicted} {seconds:.1f} {peak_mb:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput-images", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("BUNDLE", "FOLDER", "OUTPUT"))
    args = parser.parse_args()
    tuned = tune_allocator()  # as `python -m fsl_app batch-predict` does
    if args.child:
        child(*args.child)
        return
    print(f"glibc allocator tuned (fsl_app.allocator): {tuned}")

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        bundle = make_bundle(tmp)
        predictor = BundlePredictor(bundle, batch_size=BATCH_SIZE)
        folder = make_folder(tmp / "throughput", args.throughput_images)
        raw, local = [], []
        raw.append(raw_forward_rate(predictor, folder))
        for _ in range(args.rounds):  # interleaved, so both see the same machine
            local.append(local_rate(predictor, folder, tmp / "out.csv"))
            raw.append(raw_forward_rate(predictor, folder))
        raw_rate, local_median = statistics.median(raw), statistics.median(local)
        ratio = local_median / raw_rate
        print(
            f"Throughput: {args.throughput_images} Tux Paint PNGs, batch {BATCH_SIZE}, "
            f"{torch.get_num_threads()} torch threads, median of {args.rounds} rounds"
        )
        print("| raw forward img/s | batch-predict local img/s | ratio | target |")
        print("|---|---|---|---|")
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        print(
            f"| {raw_rate:.1f} | {local_median:.1f} | {ratio:.2f}x | >= {TARGET_RATIO} {verdict} |"
        )
        print(
            f"(rounds: raw {', '.join(f'{r:.1f}' for r in raw)}; local "
            f"{', '.join(f'{r:.1f}' for r in local)})\n"
        )

        print("Memory: one fresh process per size (peak resident set)")
        print("| images | seconds | img/s | peak MB |\n|---|---|---|---|")
        peaks = []
        for size in args.sizes:
            sized = make_folder(tmp / f"size{size}", size)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(bundle), str(sized),
                 str(tmp / f"out{size}.parquet")],
                check=True, capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            predicted, seconds, peak = int(out[0]), float(out[1]), float(out[2])
            peaks.append(peak)
            print(f"| {predicted} | {seconds:.0f} | {predicted / seconds:.1f} | {peak:.0f} |")
        growth = peaks[-1] / peaks[0] - 1
        verdict = "PASS" if growth <= TARGET_MEMORY_GROWTH else "MISS"
        print(f"\npeak memory {args.sizes[-1]} vs {args.sizes[0]} images: {growth:+.1%} "
              f"(target <= +{TARGET_MEMORY_GROWTH:.0%}) {verdict}")  # fmt: skip
        print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

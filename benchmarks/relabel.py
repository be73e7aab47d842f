"""How long the app takes to answer one label: store it, refit, re-predict 500 pictures.

Target on a 2-core CPU, after the first embedding: < 1 s from the click to new predictions for
500 unlabeled pictures, with no picture embedded again. Two measurements, side by side:

- the library steps a page runs after a click (label, embeddings by hash, refit with
  calibration, predict + explain the pool, suggestions), per learner;
- the whole Predict and Label-next pages rerun in Streamlit's AppTest right after a label, as a
  user's click triggers them (the browser's drawing not included).

    python benchmarks/relabel.py [--pool 500] [--rounds 7]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsl_app.active import suggest  # noqa: E402
from fsl_app.backbones import load_backbone  # noqa: E402
from fsl_app.classifier import fit_classifier, predict_set  # noqa: E402
from fsl_app.datasets import load_dataset  # noqa: E402
from fsl_app.embedded_set import embed_project  # noqa: E402
from fsl_app.embeddings import Embedder, EmbeddingCache  # noqa: E402
from fsl_app.learners import DEFAULT_LEARNER  # noqa: E402
from fsl_app.project.store import Store  # noqa: E402

CLASSES = ("T-shirt/top", "Trouser", "Sandal", "Bag", "Ankle boot")
EXAMPLES_PER_CLASS = 5
TARGET_SECONDS = 1.0


def build_project(store: Store, pool_size: int) -> tuple[int, list[tuple[str, str]]]:
    """A project of Fashion-MNIST pictures: 5 examples per class and an unlabeled pool.

    Returns the project id and (sha256, true class) of the pool, to label in the rounds.
    """
    per_class = EXAMPLES_PER_CLASS + pool_size // len(CLASSES)
    data = load_dataset("fashion-mnist-test", per_class=per_class)
    project = store.create_project("benchmark")
    pool = []
    for name in CLASSES:
        files = [
            (f"{name.replace('/', '_')}_{i}.png", source)
            for i, (source, label) in enumerate(zip(data.sources, data.labels, strict=True))
            if label == name
        ]
        store.add_class(project.id, name)
        store.add_images(project.id, files[:EXAMPLES_PER_CLASS], name)
        report = store.add_images(project.id, files[EXAMPLES_PER_CLASS:])
        pool.extend((image.sha256, name) for image in report.added)
    return project.id, pool


def time_library(store, project_id, embedder, pool, learner, rounds) -> dict[str, float]:
    steps: dict[str, list[float]] = {}
    for sha256, true_class in pool[:rounds]:
        marks = [("start", time.perf_counter())]
        store.label(project_id, [sha256], true_class)
        marks.append(("label", time.perf_counter()))
        embedded = embed_project(store, project_id, embedder)
        marks.append(("embeddings by hash", time.perf_counter()))
        classifier = fit_classifier(embedded, learner=learner)
        marks.append(("refit + calibrate", time.perf_counter()))
        predict_set(classifier, embedded)
        marks.append(("predict + explain pool", time.perf_counter()))
        suggest(embedded, classifier, k=3)
        marks.append(("suggest 3", time.perf_counter()))
        for (_, before), (name, after) in itertools.pairwise(marks):
            steps.setdefault(name, []).append(after - before)
        steps.setdefault("total", []).append(marks[-1][1] - marks[0][1])
        store.label(project_id, [sha256], None)  # same pool size every round
    return {name: statistics.median(values) for name, values in steps.items()}


def time_pages(data_dir: Path, project_id: int, pool, rounds: int) -> dict[str, float]:
    from streamlit.testing.v1 import AppTest

    os.environ["FSL_APP_DATA"] = str(data_dir)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["project_id"] = project_id
    at.run()
    timings: dict[str, list[float]] = {}
    store = Store(data_dir)
    for page in ("pages/2_Predict.py", "pages/4_Label_next.py"):
        at.switch_page(page).run()  # warm: model loaded, embeddings cached
        for sha256, true_class in pool[rounds : 2 * rounds]:
            store.label(project_id, [sha256], true_class)
            started = time.perf_counter()
            at.run()
            timings.setdefault(page, []).append(time.perf_counter() - started)
            if at.exception:
                raise RuntimeError(at.exception[0].value)
            store.label(project_id, [sha256], None)
    store.close()
    return {page: statistics.median(values) for page, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--learners", default=f"{DEFAULT_LEARNER},protonet,matching,linear,maml")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        cache_path = Path(os.path.expanduser("~/.cache/fsl_app/benchmarks.sqlite"))
        os.environ["FSL_APP_CACHE"] = str(cache_path)
        store = Store(data_dir)
        project_id, pool = build_project(store, args.pool)
        embedder = Embedder(load_backbone(), cache=EmbeddingCache(cache_path))
        started = time.perf_counter()
        embedded = embed_project(store, project_id, embedder)
        first = time.perf_counter() - started
        print(
            f"{len(embedded.ids)} pictures ({len(pool)} unlabeled); first embedding "
            f"{first:.1f} s ({embedder.images_forwarded} through the model, rest cached)\n"
        )
        forwarded = embedder.images_forwarded
        rows = {
            learner: time_library(store, project_id, embedder, pool, learner, args.rounds)
            for learner in args.learners.split(",")
        }
        assert embedder.images_forwarded == forwarded, "a label made the app embed again"
        steps = list(next(iter(rows.values())))
        print(f"Library, median of {args.rounds} labels (seconds); target total < {TARGET_SECONDS}")
        print("| learner | " + " | ".join(steps) + " | target |")
        print("|---" * (len(steps) + 2) + "|")
        for learner, timing in rows.items():
            verdict = "PASS" if timing["total"] < TARGET_SECONDS else "MISS"
            cells = " | ".join(f"{timing[s]:.3f}" for s in steps)
            print(f"| {learner} | {cells} | {verdict} |")
        store.close()

        pages = time_pages(data_dir, project_id, pool, args.rounds)
        default = f"the default learner, {DEFAULT_LEARNER}"
        print(f"\nWhole page rerun after a label (AppTest, {default}, median of {args.rounds})")
        print("| page | seconds | target |\n|---|---|---|")
        for page, seconds in pages.items():
            verdict = "PASS" if seconds < TARGET_SECONDS else "MISS"
            print(f"| {page} | {seconds:.3f} | {verdict} |")
        print(f"\nload average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

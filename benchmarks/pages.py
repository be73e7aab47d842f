"""How long each page of the app takes to open, with the demo project open (Streamlit's AppTest).

Targets on a 2-core CPU, after the project is open: every page's first visit under 3 s, a
second visit under 1 s. A first visit is measured in a fresh Python process (nothing cached in
memory: the image model is loaded, the learner fitted, held-out accuracy computed, numba
compiled), starting from the Projects page with the demo project open, as after a click on
"Open the demo project". The demo's pictures are read once beforehand (the embedding cache on
disk is warm), so the numbers are the pages' own work, not the first reading of 60 photos.
The app's background warm-up (fsl_app/warmup.py, started once the first page is drawn) is
let finish first, as while a user reads the home page and opens the demo; its time is shown
apart ("warm-up s"): a page visited before it is done waits for it.

``--code DIR`` runs the same measurement on another checkout (e.g. ``git archive main``
unpacked in DIR), page by page in turns with this one, so both meet the same load.

Also timed: the embedding map's slower layouts and "Compare all learners" on Evaluate (until
the table is complete; its rows show one by one as each learner is done).

    python benchmarks/pages.py [--repeats 1] [--pages classes predict ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CODE_ENV = "FSL_APP_BENCH_CODE"  # the checkout a worker process measures
CODE = Path(os.environ.get(CODE_ENV, REPO))
sys.path.insert(0, str(CODE))

PAGES = {
    "classes": "pages/1_Classes.py",
    "predict": "pages/2_Predict.py",
    "map": "pages/3_Embedding_map.py",
    "label-next": "pages/4_Label_next.py",
    "evaluate": "pages/5_Evaluate.py",
    "export": "pages/6_Export.py",
}
FIRST_VISIT_TARGET_S = 3.0
SECOND_VISIT_TARGET_S = 1.0
TIMEOUT_S = 600


def _app(project_id: int):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(CODE / "app.py"), default_timeout=TIMEOUT_S)
    at.session_state["project_id"] = project_id
    return at


def _check(at, what: str) -> None:
    if at.exception:
        raise SystemExit(f"{what} raised: {at.exception[0].value}")


def _timed(step) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def worker(page: str, project_id: int, actions: bool = True) -> dict[str, float]:
    """One fresh process: the Projects page with the project open, then ``page`` twice, and on
    the map and Evaluate pages their slower actions."""
    at = _app(project_id)
    home = _timed(at.run)
    _check(at, "Projects")
    try:
        from fsl_app import warmup
    except ImportError:  # a checkout from before the warm-up
        warm_up = 0.0
    else:
        warm_up = _timed(warmup.wait)
    at.switch_page(PAGES[page])
    first = _timed(at.run)
    _check(at, page)
    at.switch_page("pages/0_Projects.py").run()
    at.switch_page(PAGES[page])
    second = _timed(at.run)
    _check(at, page)
    result = {"home": home, "warm-up": warm_up, "first": first, "second": second}
    if not actions:
        return result
    if page == "map":
        for layout in ("umap", "tsne"):
            select = next((s for s in at.selectbox if s.key == "map_layout"), at.selectbox[0])
            result[f"layout {layout}"] = _timed(lambda s=select, v=layout: s.set_value(v).run())
            _check(at, f"map, layout {layout}")
    if page == "evaluate":
        result["compare all learners"] = _timed(at.button(key="compare").click().run)
        _check(at, "Compare all learners")
    return result


def prepare(data_dir: Path) -> int:
    """The demo project in ``data_dir``, its pictures read once (embedding cache warm)."""
    os.environ["FSL_APP_DATA"] = str(data_dir)
    from fsl_app.project.demo import create_demo_project
    from fsl_app.project.store import Store

    project = create_demo_project(Store(data_dir))
    at = _app(project.id)
    at.run()
    at.switch_page(PAGES["classes"]).run()  # reads every picture through the model once
    _check(at, "warm-up")
    return project.id


def measure(
    page: str, data_dir: Path, project_id: int, code: Path, actions: bool
) -> dict[str, float]:
    env = {
        **os.environ,
        "FSL_APP_DATA": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        CODE_ENV: str(code),
    }
    command = [sys.executable, __file__, "--worker", page, "--project", str(project_id)]
    command += [] if actions else ["--no-actions"]
    done = subprocess.run(
        command, cwd=code, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if done.returncode != 0:
        raise SystemExit(f"{page}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES))
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per page")
    parser.add_argument("--code", type=Path, help="also measure this checkout, in turns")
    parser.add_argument(
        "--no-actions", action="store_true", help="skip the map's layouts and the comparison"
    )
    parser.add_argument("--worker", choices=list(PAGES), help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.project, actions=not args.no_actions)))
        return

    checkouts = {"this": REPO} | ({"other": args.code.resolve()} if args.code else {})
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        project_id = prepare(data_dir)
        print(f"demo project, {os.cpu_count()} CPUs, first visit in a fresh process each time")
        print(
            f"{'code':<6} {'page':<12} {'warm-up s':>9} {'first s':>8} {'second s':>9}  "
            "verdict   other actions (s)"
        )
        for page in args.pages:
            for name, code in checkouts.items():
                runs = [
                    measure(page, data_dir, project_id, code, not args.no_actions)
                    for _ in range(args.repeats)
                ]
                best = {key: min(r[key] for r in runs) for key in runs[0]}
                verdict = (
                    "PASS"
                    if best["first"] < FIRST_VISIT_TARGET_S
                    and best["second"] < SECOND_VISIT_TARGET_S
                    else "MISS"
                )
                others = ", ".join(
                    f"{key} {value:.1f}"
                    for key, value in best.items()
                    if key not in ("home", "warm-up", "first", "second")
                )
                print(
                    f"{name:<6} {page:<12} {best['warm-up']:>9.2f} {best['first']:>8.2f} "
                    f"{best['second']:>9.2f}  {verdict:<8}  {others}",
                    flush=True,
                )
        print(
            f"targets: first visit < {FIRST_VISIT_TARGET_S:g} s, "
            f"second visit < {SECOND_VISIT_TARGET_S:g} s"
        )


if __name__ == "__main__":
    main()

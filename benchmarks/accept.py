"""How long accepting one picture on Predict takes, before and after the cards became fragments.

Target on a 2-core CPU: a click on "Yes, <class>" answers in under 0.3 s (it feels instant).

- **whole page** (every accept before this change; "Update the predictions now" and "Accept all
  sure" today): Predict run in Streamlit's AppTest right after a label: refit with calibration,
  predict and explain every picture to sort, draw the page and its 12 cards;
- **one card** (an accept today): what the card's fragment runs on a click, in AppTest: label
  the picture (only if still to sort) and draw the card with its answer and thumbnail.

The browser's drawing is not included in either. On the demo project (20 examples, 40 to sort):

    python benchmarks/accept.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsl_app.project.demo import create_demo_project  # noqa: E402
from fsl_app.project.store import Store  # noqa: E402

TARGET_SECONDS = 0.3


def card_run(root: str, project_id: int, class_name: str) -> None:
    """The work of one card's fragment after a click (run by AppTest as a script): the picture
    is the one the benchmark puts in ``st.session_state["picture"]`` as (sha256, name)."""
    import streamlit as st

    from fsl_app.project.sorting import label_unlabeled
    from fsl_app.ui.resources import get_store
    from fsl_app.ui.widgets import plain, show_thumbnail

    sha256, name = st.session_state["picture"]
    store = get_store(root)
    outcome = label_unlabeled(store, project_id, {sha256: class_name})
    kind, text = outcome.messages({sha256: name})[0]
    with st.container(border=True):
        picture, verdict, _ = st.columns([1, 2, 2])
        with picture:
            show_thumbnail(store, sha256, name, width=160)
        with verdict:
            getattr(st, kind)(plain(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        os.environ["FSL_APP_DATA"] = str(data_dir)
        os.environ["FSL_APP_CACHE"] = os.path.expanduser("~/.cache/fsl_app/benchmarks.sqlite")
        store = Store(data_dir)
        project = create_demo_project(store)
        pool = store.list_images(project.id, labeled=False)[: 2 * args.rounds]
        classes = [c.name for c in store.list_classes(project.id)]

        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        at.session_state["project_id"] = project.id
        at.run()
        at.switch_page("pages/2_Predict.py").run()  # warm: model loaded, pictures embedded
        whole, card = [], []
        for image in pool[: args.rounds]:
            store.label(project.id, [image.sha256], classes[0])
            started = time.perf_counter()
            at.run()
            whole.append(time.perf_counter() - started)
            if at.exception:
                raise RuntimeError(at.exception[0].value)
        one = AppTest.from_function(
            card_run, args=(str(data_dir), project.id, classes[0]), default_timeout=600
        )
        for image in pool[args.rounds :]:
            one.session_state["picture"] = (image.sha256, image.name)
            started = time.perf_counter()
            one.run()
            card.append(time.perf_counter() - started)
            if one.exception or not one.success:
                raise RuntimeError("the card did not answer")
        store.close()

    print(f"Accepting one picture on Predict (AppTest, demo project, median of {args.rounds})")
    print("| what reruns | seconds | target |\n|---|---|---|")
    for label, values in (("whole page (before)", whole), ("one card (now)", card)):
        seconds = statistics.median(values)
        verdict = "PASS" if seconds < TARGET_SECONDS else "MISS"
        print(f"| {label} | {seconds:.3f} | {verdict} |")
    print(f"\nload average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

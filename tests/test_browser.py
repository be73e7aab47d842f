"""The app in a real browser: `streamlit run app.py`, Debian's chromium driven by Playwright.

A user's path through the pages, by clicks and real file inputs: create a project, add the
classes "bird" and "fruit", drop five real photos into each, drop one new bird photo on the
Predict page, read the prediction on its card, then click the query's point on the embedding map
and label it from there; and a demo: open the demo project, accept all sure predictions,
download the sorted pictures. A full-page screenshot is saved at each step
in ``$FSL_APP_SCREENSHOTS`` (default ``test-artifacts/browser/``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import zipfile
from collections import Counter

import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Screenshots,
    StreamlitServer,
    require_browser,
    screenshot_dir,
    wait_idle,
    wait_text,
)

from fsl_app.project.demo import DEMO_PROJECT_NAME

pytestmark = pytest.mark.slow

# Generous: the first pages load the image model and embed photos on a couple of CPU cores.
SLOW_MS = 120_000


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    app = StreamlitServer(data, tmp_path / "streamlit.log")
    try:
        app.wait_healthy(timeout=120)
        yield app
    finally:
        app.stop()


@pytest.fixture
def browser_page():
    sync_playwright = require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(SLOW_MS)
            yield page
        finally:
            browser.close()


def uploader_input(page, label: str):
    """The real ``<input type=file>`` of the file uploader labelled ``label``."""
    uploader = page.get_by_test_id("stFileUploader").filter(has_text=label)
    return uploader.locator('input[type="file"]')


def test_teach_two_classes_and_predict_in_a_real_browser(browser_page, server, photos, tmp_path):
    page = browser_page
    shots = Screenshots(page, screenshot_dir())
    query = tmp_path / "query.png"  # a neutral name: the card's text cannot come from it
    shutil.copy(photos["bird"][10], query)
    examples = {name: photos[name][:5] for name in ("bird", "fruit")}
    assert photos["bird"][10] not in examples["bird"]

    try:
        page.goto(server.url + "/")
        wait_text(page, "Teach the computer new image classes", SLOW_MS)
        wait_text(page, "No projects yet", SLOW_MS)
        shots.take("home")

        page.get_by_label("Project name").fill("Birds and fruit")
        page.get_by_role("button", name="Create project").click()
        wait_text(page, "Open project: Birds and fruit")
        shots.take("project-created")

        page.get_by_role("link", name="Next: define your classes").click()
        page.wait_for_url(re.compile(r"/classes"))
        wait_text(page, "Make a class for each kind of picture")
        for name in examples:
            page.get_by_label("New class name").fill(name)
            page.get_by_role("button", name="Add class").click()
            page.get_by_role("heading", name=name, exact=True).wait_for()  # its class card
            wait_idle(page, SLOW_MS)
        shots.take("classes-added")

        for name, files in examples.items():
            label = f"Drop example pictures of '{name}' here"
            uploader_input(page, label).set_input_files([str(f) for f in files])
            wait_text(page, f"Added {len(files)} pictures to '{name}'.")
            wait_idle(page, SLOW_MS)
            shots.take(f"examples-{name}")

        page.get_by_role("link", name="Next: see what the app predicts").click()
        page.wait_for_url(re.compile(r"/predict"))
        wait_text(page, "Drop new pictures to sort here")
        shots.take("predict-empty")

        uploader_input(page, "Drop new pictures to sort here").set_input_files([str(query)])
        wait_text(page, "Added 1 picture to the pictures to sort.")
        wait_text(page, "Looks like:")
        shots.take("prediction")

        cards = page.get_by_test_id("stVerticalBlock").filter(has_text="Looks like:")
        card = cards.filter(has_text=query.name).last  # the innermost block: the card itself
        verdict = card.get_by_test_id("stText").first.inner_text().strip()
        badge = card.get_by_text(re.compile(r"^(sure|fairly sure|unsure): \d+%$")).first
        assert verdict == "bird", f"the bird photo was shown as {verdict!r}"
        assert badge.is_visible(), "no confidence badge on the prediction's card"
        to_sort = page.get_by_test_id("stMetric").filter(has_text="Pictures to sort")
        assert to_sort.get_by_test_id("stMetricValue").inner_text().strip() == "1"

        # On the embedding map, a click on the query's point shows it; one more labels it.
        page.get_by_role("link", name="Map of pictures").click()
        page.wait_for_url(re.compile(r"/map"))
        wait_text(page, "Nothing selected yet.")
        wait_idle(page, SLOW_MS)
        points = page.locator(".js-plotly-plot .scatterlayer .point")
        points.first.wait_for()  # plotly draws after the page's script has finished
        assert points.count() == 10 + 1 + 2, "examples, the query and two class centres"
        # The only unlabeled picture is the query, and with nothing else to pick it is the
        # suggestion: a ring in the bird colour, as it is predicted bird.
        _click_point_of_trace(page, "bird · label next")
        wait_text(page, "1 picture selected", 30_000)
        wait_idle(page, SLOW_MS)
        shots.take("map-selected")
        choose = page.get_by_label("Label the selected pictures as")
        choose.click()
        choose.fill("bird")
        page.keyboard.press("Enter")
        wait_idle(page, SLOW_MS)
        page.get_by_role("button", name="Label them").click()
        wait_text(page, "1 picture labeled as bird.")
        shots.take("map-labeled")
    except Exception:
        with contextlib.suppress(Exception):  # the browser may be the thing that failed
            shots.take("failure")
        print(f"Screenshots in {shots.folder}; the server's last lines:\n{server.log_tail()}")
        raise


def _click_point_of_trace(page, trace_name: str) -> None:
    """Click, with the mouse as a person would, the marker of the one-point trace ``trace_name``."""
    names = page.evaluate(
        "() => document.querySelector('.js-plotly-plot').data.map(trace => trace.name)"
    )
    assert trace_name in names, f"traces on the map: {names!r}"
    point = page.locator(".js-plotly-plot .scatterlayer .trace").nth(names.index(trace_name))
    box = point.locator(".point").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_sort_the_demo_in_a_real_browser(browser_page, server, tmp_path):
    """A demo to a stakeholder: open the demo project, accept every sure prediction in one
    click, and download the sorted pictures as a ZIP with one folder per class."""
    page = browser_page
    shots = Screenshots(page, screenshot_dir())
    try:
        page.goto(server.url + "/")
        wait_text(page, "Teach the computer new image classes", SLOW_MS)
        page.get_by_role("button", name="Open the demo project").click()
        wait_text(page, f"Open project: {DEMO_PROJECT_NAME}", SLOW_MS)
        shots.take("demo-opened")

        page.get_by_role("link", name="Predict").first.click()
        page.wait_for_url(re.compile(r"/predict"))
        wait_text(page, "Sort the pile", SLOW_MS)
        wait_idle(page, SLOW_MS)
        shots.take("demo-predict")
        accept = page.get_by_role("button", name=re.compile(r"^.*Accept all \d+ sure picture"))
        n_sure = int(re.search(r"Accept all (\d+) sure", accept.inner_text())[1])
        assert n_sure > 0, "the demo should be sure of some of its pictures"
        accept.click()
        wait_text(page, f"{n_sure} pictures accepted as examples", SLOW_MS)
        wait_idle(page, SLOW_MS)
        shots.take("demo-accepted")

        with page.expect_download(timeout=SLOW_MS) as download:
            page.get_by_role("button", name=re.compile("Download the sorted pictures")).click()
        path = tmp_path / "sorted.zip"
        download.value.save_as(path)
        with zipfile.ZipFile(path) as archive:
            folders = Counter(name.split("/")[-2] for name in archive.namelist() if "/" in name)
        for class_name in ("bird", "flower", "fruit", "road sign", "tool"):
            # 4 examples each, plus the accepted sure pictures and the rest where the model puts
            # them: at least the examples in every class's folder.
            assert folders[class_name] >= 4, folders
        assert sum(folders.values()) == 5 * 4 + 40, folders  # every picture, once
    except Exception:
        with contextlib.suppress(Exception):
            shots.take("failure")
        print(f"Screenshots in {shots.folder}; the server's last lines:\n{server.log_tail()}")
        raise

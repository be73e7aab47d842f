"""The app, page by page, headless (Streamlit's AppTest): real photo bytes in, a project on disk.

Each test runs the multipage app from ``app.py`` and moves between pages with ``switch_page``,
as the sidebar does, on a data folder of its own.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from fsl_app.embeddings import describe_device
from fsl_app.learners import DEFAULT_LEARNER, LEARNERS
from fsl_app.project.demo import DEMO_EXAMPLES_PER_CLASS
from fsl_app.project.store import Store
from fsl_app.ui.widgets import plain

pytestmark = pytest.mark.slow

TIMEOUT = 300  # the first run loads the backbone and embeds the pictures, on 2 cores
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("FSL_APP_DATA", str(folder))
    return folder


def start(data_dir: Path) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    return at


def go(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception[0].value
    return at


def files(paths) -> list[tuple[str, bytes, str]]:
    return [(p.name, p.read_bytes(), "image/png") for p in paths]


def shown(markdown: str) -> str:
    """Markdown as a reader sees it: user text is escaped (``plain``), the reader sees no \\."""
    return re.sub(r"\\(.)", r"\1", markdown)


def texts(at: AppTest) -> str:
    """Everything the page says, as one string, as a reader sees it."""
    parts = []
    for kind in ("markdown", "text", "caption", "info", "success", "warning", "error", "metric"):
        for element in getattr(at, kind):
            parts.append(shown(str(getattr(element, "value", ""))))
    return "\n".join(parts)


def create_project(at: AppTest, name: str) -> AppTest:
    at.text_input[0].input(name)
    at.button(key="FormSubmitter:new_project-Create project").click().run()
    assert not at.exception
    return at


def add_class(at: AppTest, name: str) -> AppTest:
    at.text_input[0].input(name)
    at.button(key="FormSubmitter:add_class-Add class").click().run()
    assert not at.exception, at.exception
    return at


def class_uploader(at: AppTest, class_name: str):
    label = f"Drop example pictures of '{class_name}' here (many at once is fine)"
    return next(u for u in at.file_uploader if u.label == label)


def test_projects_are_created_renamed_and_deleted_only_after_asking(data_dir):
    at = start(data_dir)
    assert "No projects yet" in texts(at)
    create_project(at, "Garden birds")
    assert "Open project: Garden birds" in [s.value for s in at.subheader]
    at.text_input(key="rename_value").input("Birds <b>of</b> the garden")
    at.button(key="rename").click().run()
    # A typed name is text, shown as typed: no HTML is interpreted anywhere.
    assert "Birds <b>of</b> the garden" in texts(at)
    at.button(key="delete").click().run()
    assert any("restore it" in w.value for w in at.warning)
    at.button(key="delete_no").click().run()
    assert len(Store(data_dir).list_projects()) == 1
    at.button(key="delete").click().run()
    at.button(key="delete_yes").click().run()
    assert Store(data_dir).list_projects() == []
    assert "No projects yet" in texts(at)
    # Deleted is not gone: it waits under "Recently deleted" and comes back.
    restore = next(b for b in at.button if str(b.key).startswith("restore_project_"))
    restore.click().run()
    assert [p.name for p in Store(data_dir).list_projects()] == ["Birds <b>of</b> the garden"]


def test_an_empty_or_taken_project_name_is_refused_clearly(data_dir):
    at = start(data_dir)
    create_project(at, "   ")
    assert at.error and "name is empty" in at.error[0].value
    create_project(at, "Mine")
    create_project(at, "mine")
    assert at.error and "mine" in at.error[0].value.lower()
    assert len(Store(data_dir).list_projects()) == 1


def test_model_settings_are_kept_with_the_project(data_dir):
    at = start(data_dir)
    create_project(at, "Settings")
    at.selectbox[2].set_value("matching")  # device, backbone, learner
    at.slider[0].set_value(1.2)
    at.button(key="FormSubmitter:model_settings-Save model settings").click().run()
    settings = Store(data_dir).list_projects()[0].settings
    assert settings["learner"] == "matching" and settings["strictness"] == pytest.approx(1.2)
    assert f"Running on: **{describe_device()}**" in texts(at)  # "CPU" here, a GPU's name there


def test_classes_take_real_uploads_and_refuse_bad_files(data_dir, photos):
    at = start(data_dir)
    create_project(at, "Uploads")
    go(at, "1_Classes")
    assert "No classes yet" in texts(at)
    add_class(at, "bird")
    add_class(at, "fruit")
    class_uploader(at, "bird").set_value(
        [*files(photos["bird"][:4]), ("notes.png", b"not a picture at all", "image/png")]
    )
    at.run()
    assert not at.exception
    page = texts(at)
    assert "Added 4 pictures to 'bird'." in page
    assert "'notes.png' was not added" in page
    # The same picture again is noticed, and the project keeps what it had.
    class_uploader(at, "bird").set_value(files(photos["bird"][:1]))
    at.run()
    assert "already in the project" in texts(at)
    with Store(data_dir) as store:
        project = store.list_projects()[0]
        assert {c.name: c.n_examples for c in store.list_classes(project.id)} == {
            "bird": 4,
            "fruit": 0,
        }
    assert "Add example images to: fruit." not in texts(at)  # hints come on Predict
    go(at, "2_Predict")
    assert "Add example images to: fruit." in texts(at)


def test_predict_shows_the_right_class_and_a_correction_becomes_an_example(data_dir, photos):
    at = start(data_dir)
    create_project(at, "Predict")
    go(at, "1_Classes")
    add_class(at, "bird")
    add_class(at, "fruit")
    class_uploader(at, "bird").set_value(files(photos["bird"][:5]))
    at.run()
    class_uploader(at, "fruit").set_value(files(photos["fruit"][:5]))
    at.run()
    go(at, "2_Predict")
    at.file_uploader[0].set_value(files([photos["bird"][10], photos["fruit"][6]]))
    at.run()
    assert not at.exception
    page = texts(at)
    assert "Added 2 pictures to the pictures to sort." in page
    verdicts = [t.value for t in at.text]
    assert sorted(verdicts) == ["bird", "fruit"]
    # Each prediction has its uncertainty badge (st.badge is markdown with a badge directive).
    badges = [m.value for m in at.markdown if "-badge[" in m.value]
    assert len(badges) == 2 and all("%" in b or "none of these" in b for b in badges)
    assert at.get("download_button")  # predictions as CSV
    # One click accepts the first prediction: it becomes an example of that class.
    accept = next(b for b in at.button if b.label.startswith("Yes, "))
    accepted_class = accept.label.removeprefix("Yes, ")
    accept.click().run()
    # The card says so at once (a fragment: in a browser, the click reruns that card alone).
    assert any("is now an example of" in shown(s.value) for s in at.success)
    at.button(key="refresh").click().run()
    with Store(data_dir) as store:
        project = store.list_projects()[0]
        counts = {c.name: c.n_examples for c in store.list_classes(project.id)}
    assert counts[accepted_class] == 6
    assert len(at.text) == 1  # one picture left to sort


def test_demo_project_runs_every_page(data_dir):
    at = start(data_dir)
    at.button(key="demo").click().run()
    assert not at.exception
    assert any(s.value.startswith("Open project: Demo") for s in at.subheader)
    # The projects list says how many examples each class has.
    assert f"Examples: bird {DEMO_EXAMPLES_PER_CLASS} · flower {DEMO_EXAMPLES_PER_CLASS}" in texts(
        at
    )
    go(at, "1_Classes")
    # One card per class, in the order the classes were made, each saying how many examples.
    assert [m.value for m in at.markdown if m.value.startswith("#### ")][:2] == [
        "#### bird",
        "#### flower",
    ]
    assert f"{DEMO_EXAMPLES_PER_CLASS} examples" in texts(at)
    go(at, "2_Predict")
    # One tile per badge, named as the cards name them.
    assert [m.label for m in at.metric][:6] == [
        "Pictures to sort",
        "Sure",
        "Fairly sure",
        "Unsure",
        "None of these",
        "Marked none of these",
    ]
    # "None of these classes" on a card marks the picture; its card then says so, and
    # "Not none of these" takes the mark back.
    none_key = next(b.key for b in at.button if b.key and b.key.startswith("none_"))
    prefix = none_key.removeprefix("none_")
    at.button(key=none_key).click().run()
    assert not at.exception
    assert any("is marked as none of these classes" in shown(i.value) for i in at.info)
    at.button(key="refresh").click().run()  # the tiles catch up at the page's next run
    assert [m.value for m in at.metric][5] == "1"
    assert any("marked by you" in t.value for t in at.text)
    at.button(key=f"unmark_{prefix}").click().run()
    at.button(key="refresh").click().run()
    assert not at.exception and [m.value for m in at.metric][5] == "0"
    go(at, "3_Embedding_map")
    assert at.get("plotly_chart")
    for layout in ("pca", "umap"):
        at.selectbox[0].set_value(layout).run()
        assert not at.exception
    at.radio[0].set_value(3).run()
    assert not at.exception and at.get("plotly_chart")
    go(at, "5_Evaluate")
    labels = [m.label for m in at.metric]
    assert labels == ["Accuracy", "Pictures tested", "Its confidence"]
    at.button(key="compare").click().run()
    assert not at.exception
    table = at.dataframe[-2].value  # the last one holds the technical names, under Advanced
    in_use = f"{LEARNERS[DEFAULT_LEARNER].display_name} (in use)"
    assert {in_use, "Class centres", "Nearest examples", "Straight boundaries"} <= set(
        table["how it learns"]
    )


def test_label_next_takes_one_click_and_the_accuracy_chart_grows(data_dir):
    at = start(data_dir)
    at.button(key="demo").click().run()
    go(at, "4_Label_next")
    reasons = [m.value for m in at.markdown if m.value.startswith("**Suggestion")]
    assert len(reasons) == 3 and all("why:" in r for r in reasons)
    with Store(data_dir) as store:
        project = store.list_projects()[0]
        before = len(store.list_images(project.id, labeled=True))
    at.button[0].click().run()  # the first class button of the first suggestion
    assert not at.exception
    assert any("is now an example of" in s.value for s in at.success)
    with Store(data_dir) as store:
        assert len(store.list_images(project.id, labeled=True)) == before + 1
        history = store.accuracy_history(project.id)
    assert [h.n_labels for h in history] == [before, before + 1]
    assert all(h.low <= h.accuracy <= h.high for h in history)
    # "None of these classes" keeps a picture out of the suggestions for good.
    none_key = next(b.key for b in at.button if b.key and b.key.startswith("none_"))
    at.button(key=none_key).click().run()
    assert not at.exception
    prefix = none_key.removeprefix("none_")
    with Store(data_dir) as store:
        outside = store.none_of_these(project.id)
    assert [i for i in outside if i.startswith(prefix)]
    assert not [b for b in at.button if b.key and b.key.endswith(prefix)]
    # "Skip for now" hides the next one, also after a reload (a new session of the same
    # project), until the person asks for the skipped ones again.
    skip_key = next(b.key for b in at.button if b.key and b.key.startswith("skip_"))
    at.button(key=skip_key).click().run()
    skipped = skip_key.removeprefix("skip_")
    assert not [b for b in at.button if b.key and b.key.endswith(skipped)]
    reloaded = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    reloaded.query_params["project"] = str(project.id)
    go(reloaded.run(), "4_Label_next")
    assert not [b for b in reloaded.button if b.key and b.key.endswith(skipped)]
    assert reloaded.button(key="unskip").label == "Offer the 1 skipped picture again"
    # A suggestion labeled in another tab meanwhile: the click says so instead of nothing.
    label = next(b for b in at.button if b.key and b.key.startswith("label_"))
    with Store(data_dir) as store:
        image = next(
            i for i in store.list_images(project.id) if i.sha256.startswith(label.key.split("_")[1])
        )
        store.label(project.id, [image.sha256], "tool")
    label.click().run()
    assert any("already labeled as tool in another window" in shown(i.value) for i in at.info)


def jpeg(path: Path) -> bytes:
    """A Tux Paint photo as a camera would send it: a JPEG, no transparency."""
    picture = Image.open(path).convert("RGBA")
    flat = Image.new("RGB", picture.size, "white")
    flat.paste(picture, mask=picture.getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_a_pile_is_sorted_on_predict_with_a_class_still_empty_and_a_camera_shot(data_dir, photos):
    at = start(data_dir)
    at.button(key="demo").click().run()
    go(at, "1_Classes")
    add_class(at, "fish")  # no example yet: the predictions stay
    go(at, "2_Predict")
    assert "'fish' is waiting for examples" in texts(at)
    assert at.metric[0].label == "Pictures to sort" and at.metric[0].value == "40"
    # The new class is one click away on every card, so a picture can be its first example.
    correct = next(b for b in at.selectbox if b.key and b.key.startswith("correct_"))
    assert "fish" in correct.options

    # A camera shot goes where uploads go, and its card comes first with its prediction.
    at.toggle(key="predict_camera_on").set_value(True).run()
    at.camera_input[0].set_value(("shot.jpg", jpeg(photos["bird"][-2]), "image/jpeg")).run()
    assert not at.exception
    assert "Added 1 picture to the pictures to sort." in texts(at)
    assert at.text[0].value == "bird"
    with Store(data_dir) as store:
        project = store.list_projects()[0]
        assert any(i.name.startswith("camera ") for i in store.list_images(project.id))
        before = {c.name: c.n_examples for c in store.list_classes(project.id)}

    # "Accept all sure" says how many, and makes that many examples.
    accept_all = at.button(key="accept_all_sure")
    n_sure = int(re.search(r"Accept all (\d+) sure", accept_all.label).group(1))
    accept_all.click().run()
    assert not at.exception
    assert any(f"{n_sure} pictures accepted as examples" in shown(s.value) for s in at.success)
    with Store(data_dir) as store:
        after = {c.name: c.n_examples for c in store.list_classes(project.id)}
    assert sum(after.values()) - sum(before.values()) == n_sure and after["fish"] == 0
    # And can be taken back.
    at.button(key="undo").click().run()
    with Store(data_dir) as store:
        assert {c.name: c.n_examples for c in store.list_classes(project.id)} == before
    downloads = [d.proto.label for d in at.get("download_button")]
    assert downloads == ["Download predictions (CSV)", "Download the sorted pictures (ZIP)"]
    go(at, "6_Export")  # the model can be exported, and says what it leaves out
    assert "'fish' is waiting for examples" in texts(at)
    assert at.button(key="prepare_bundle")


def test_export_bundle_zip_and_reimport(data_dir, tmp_path, photos, capsys):
    at = start(data_dir)
    at.button(key="demo").click().run()
    go(at, "6_Export")
    # The whole command is shown (wrapped, never cut off), beside the page that opens the file.
    command = at.code[0]
    assert command.proto.wrap_lines and "--images FOLDER_OF_PICTURES" in command.value
    at.button(key="prepare_bundle").click().run()
    assert not at.exception
    bundle = tmp_path / "demo.fslbundle"
    bundle.write_bytes(at.session_state["bundle"][1])
    at.button(key="prepare_zip").click().run()
    archive = at.session_state["dataset_zip"][1]
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        folders = {Path(name).parts[0] for name in opened.namelist()}
    assert folders == {"bird", "flower", "fruit", "road sign", "tool"}

    # The bundle classifies new pictures from the command line.
    from fsl_app.cli import main

    query = photos["bird"][-1]
    assert main(["predict", "--bundle", str(bundle), "--query", str(query), "--format", "csv"]) == 0
    assert ",bird," in capsys.readouterr().out

    # The ZIP, imported into a new empty project, gives back the classes and examples.
    at.switch_page("pages/0_Projects.py").run()
    create_project(at, "Copy")
    go(at, "6_Export")
    at.file_uploader[0].set_value([("demo.zip", archive, "application/zip")])
    at.run()
    assert not at.exception
    assert any("Imported: 20 images added" in shown(s.value) for s in at.success)
    with Store(data_dir) as store:
        copy = next(p for p in store.list_projects() if p.name == "Copy")
        counts = {c.name: c.n_examples for c in store.list_classes(copy.id)}
    assert counts == dict.fromkeys(["bird", "flower", "fruit", "road sign", "tool"], 4)
    # A file that is not a ZIP is refused and the project keeps what it had.
    at.file_uploader[0].set_value([("broken.zip", b"PK\x03\x04 broken", "application/zip")])
    at.run()
    assert at.error and "Nothing was imported" in at.error[0].value


def test_an_unusable_data_folder_gets_a_clear_message(tmp_path, monkeypatch):
    # A data folder that cannot be made (here: beneath a file) stands for every folder the
    # app cannot write to; tests/test_store.py checks real permissions as another user.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FSL_APP_DATA", str(blocker / "data"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.error and "cannot be written to" in at.error[0].value
    assert "FSL_APP_DATA" in at.error[0].value


def test_classes_page_flags_a_picture_in_the_wrong_class_and_moves_it(data_dir, photos):
    at = start(data_dir)
    create_project(at, "Check")
    go(at, "1_Classes")
    for name in ("bird", "fruit"):
        add_class(at, name)
    # A strawberry among the birds: the check is sure it is fruit (84%; with a third class of
    # flowers it says 61%, too unsure to suggest a move).
    class_uploader(at, "bird").set_value(files([*photos["bird"][:5], photos["fruit"][-1]]))
    at.run()
    class_uploader(at, "fruit").set_value(files(photos["fruit"][:5]))
    at.run()
    assert not at.exception
    move = [b for b in at.button if b.label == "Move it to fruit"]
    assert len(move) == 1
    assert any(photos["fruit"][-1].name in m.value.replace("\\", "") for m in at.markdown)
    move[0].click().run()
    with Store(data_dir) as store:
        project = store.list_projects()[0]
        counts = {c.name: c.n_examples for c in store.list_classes(project.id)}
        moved = store.confirmed_labels(project.id)
    assert counts == {"bird": 5, "fruit": 6}
    assert len(moved) == 1  # what the user decided is not suggested again
    assert not [b for b in at.button if b.label.startswith("Move it to")]


@pytest.mark.parametrize(
    "address",
    ["²", "1" * 23, "٣", "-1", "0", "1e3", "one"],
    ids=[
        "superscript-two",
        "23-digits",
        "arabic-indic-three",
        "negative",
        "zero",
        "exponent",
        "word",
    ],
)
def test_a_bad_project_in_the_address_opens_no_project(data_dir, address):
    # "²".isdigit() is True but int("²") raises; 23 digits overflow SQLite's integers.
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["project"] = address
    at.run()
    assert not at.exception
    assert "project" not in at.query_params  # the bad parameter is gone from the address
    for page in ("1_Classes", "2_Predict", "6_Export"):
        at.query_params["project"] = address
        go(at, page)
        assert "Open or create a project first" in texts(at)
        assert "project" not in at.query_params


def test_the_app_shows_no_tracebacks_and_listens_on_this_machine_only():
    import tomllib

    with (ROOT / ".streamlit" / "config.toml").open("rb") as opened:
        config = tomllib.load(opened)
    # "none": the browser gets a generic message; type, message and traceback go to the log.
    assert config["client"]["showErrorDetails"] == "none"
    # No login: nobody else on the network may reach it unless it is shared on purpose.
    assert config["server"]["address"] == "127.0.0.1"


# Markdown and HTML that would act if rendered: an image the browser fetches, a link, bold,
# a tag, TeX. Each must reach the page escaped, never as this raw syntax.
TRICKS = ("![t](http://host/track.png)", "[link](http://host/)", "**bold**", "<b>tag</b>", "$x^2$")
# st.text, text inputs and select boxes show their strings literally; a plotly figure's spec
# is data (its HTML is escaped by fsl_app.projection, tested in tests/test_projection.py).
LITERAL = {"text", "text_input", "selectbox", "multiselect", "plotly_chart", "code"}
MARKDOWN_FIELDS = {"body", "label", "caption", "help", "delta"}


def markdown_strings(node) -> list[str]:
    """Every string in the page that Streamlit renders as markdown (bodies, labels, captions,
    tab and expander labels), from each element's message."""
    found = []

    def strings(message) -> None:
        for field, value in message.ListFields():
            values = value if field.is_repeated else [value]
            for item in values:
                if hasattr(item, "ListFields"):
                    strings(item)
                elif isinstance(item, str) and field.name in MARKDOWN_FIELDS:
                    found.append(item)

    proto = getattr(node, "proto", None)
    if proto is not None and getattr(node, "type", None) not in LITERAL:
        strings(proto)
    for child in getattr(node, "children", {}).values():
        found.extend(markdown_strings(child))
    return found


def assert_no_active_markup(at: AppTest, where: str) -> None:
    assert not at.exception, (where, at.exception)
    page = markdown_strings(at._tree)
    for trick in TRICKS:
        raw = [s for s in page if trick in s]
        assert not raw, (where, trick, raw)


def test_user_typed_names_show_as_typed_on_every_page(data_dir, photos):
    project_name = " ".join(("Project", *TRICKS))
    bird, fruit = "bird " + " ".join(TRICKS[:3]), "fruit " + " ".join(TRICKS[2:])
    at = start(data_dir)
    create_project(at, project_name)
    assert_no_active_markup(at, "Projects")
    assert f"Open project: {project_name}" in [shown(s.value) for s in at.subheader]
    at.button(key="delete").click().run()  # the question quotes the project's name
    assert_no_active_markup(at, "Projects, delete?")
    at.button(key="delete_no").click().run()

    go(at, "1_Classes")
    add_class(at, bird)
    add_class(at, fruit)
    assert_no_active_markup(at, "Classes")
    assert project_name in shown(at.sidebar.caption[0].value)
    go(at, "2_Predict")  # "Add example images to: ..." names both classes
    assert_no_active_markup(at, "Predict, no examples yet")
    go(at, "1_Classes")
    bird_files = files(photos["bird"][:5])
    bird_files.append(
        (f"{TRICKS[0]} {TRICKS[3]}.png", photos["fruit"][-1].read_bytes(), "image/png")
    )
    class_uploader(at, plain(bird)).set_value(bird_files)
    at.run()
    assert_no_active_markup(at, "Classes, after an upload")  # the flashed report names files
    class_uploader(at, plain(fruit)).set_value(files(photos["fruit"][:5]))
    at.run()
    assert_no_active_markup(at, "Classes, with examples")
    cards = [shown(m.value) for m in at.markdown if m.value.startswith("#### ")]
    assert cards == [f"#### {bird}", f"#### {fruit}"]

    go(at, "2_Predict")
    at.file_uploader[0].set_value(
        [
            (f"{TRICKS[1]}.png", photos["bird"][10].read_bytes(), "image/png"),
            (f"{TRICKS[4]}.png", photos["fruit"][10].read_bytes(), "image/png"),
        ]
    )
    at.run()
    assert_no_active_markup(at, "Predict")
    correct = next(b for b in at.selectbox if b.key and b.key.startswith("correct_"))
    correct.set_value(fruit).run()
    assert_no_active_markup(at, "Predict, after labeling")  # the flash names file and class

    for page in ("3_Embedding_map", "4_Label_next", "5_Evaluate", "6_Export"):
        go(at, page)
        assert_no_active_markup(at, page)

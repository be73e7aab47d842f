"""Plain words by default, technical names one click away; the demo opens once; the learner
comparison shows every learner; the map's markers and legend agree in 2-D and 3-D.

The app tests run the real app headless (AppTest) on the demo project's real photos.
"""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1.element_tree import Block, Expander
from test_app import data_dir, go, shown, start  # noqa: F401 (data_dir is a fixture)

from fsl_app.backbones import BACKBONE_WORDS, WHEEL_BACKBONES, backbone_words
from fsl_app.evaluation.held_out import evaluate_held_out
from fsl_app.learners import DEFAULT_LEARNER, LEARNERS
from fsl_app.project.demo import DEMO_PROJECT_NAME, open_demo_project
from fsl_app.project.store import Store
from fsl_app.projection import LAYOUT_WORDS, METHODS, map_figure, map_points

# Words a biologist should not meet outside an "Advanced" or "Details" area.
TECHNICAL = (
    "ProtoNet",
    "Prototypical",
    "MAML",
    "Matching Networks",
    "Relation Network",
    "Siamese",
    "k-means",
    "tf_efficientnet",
    "PCA",
    "t-SNE",
    "UMAP",
    "prototype",
    "Few-shot",
    "Calibration error",
    "ECE",
    "Embedding map",
)


def test_every_learner_and_offline_image_model_has_plain_words():
    for entry in LEARNERS.values():
        assert entry.display_name and entry.description and entry.technical_name
        # The technical name stays out of the plain one, which the app shows by default.
        assert not any(word in entry.label for word in TECHNICAL), entry.label
    assert set(WHEEL_BACKBONES) <= set(BACKBONE_WORDS)
    assert not any("efficientnet" in backbone_words(b).label for b in WHEEL_BACKBONES)
    assert "my_model" in backbone_words("my_model").display_name  # unknown: named by its id


def test_layouts_have_plain_names_and_keep_the_technical_ones():
    assert set(LAYOUT_WORDS) == set(METHODS)
    assert LAYOUT_WORDS["pca"] == "fast"
    assert not any(word in " ".join(LAYOUT_WORDS.values()) for word in TECHNICAL)


def test_held_out_evaluation_explains_itself_in_plain_words():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(i * 3, 1, (6, 8)) for i in range(3)]).astype(np.float32)
    labels = [c for c in "abc" for _ in range(6)]
    evaluation = evaluate_held_out(features, labels, [str(i) for i in range(18)])
    assert evaluation.method == "leave-one-out"
    assert "hidden in turn" in evaluation.method_words
    word, sentence = evaluation.confidence_verdict()
    assert word in {"Honest", "Roughly honest", "Too sure", "Too modest"} and sentence
    assert str(round(evaluation.ece, 2)) not in sentence  # the number stays in the details


def test_opening_the_demo_twice_opens_the_same_project(tmp_path):
    store = Store(tmp_path / "data")
    first = open_demo_project(store)
    store.label(first.id, [store.list_images(first.id)[0].sha256], None)  # the user's work
    second = open_demo_project(store)
    assert second.id == first.id
    assert [p.name for p in store.list_projects()] == [DEMO_PROJECT_NAME]
    store.delete_project(first.id)  # deleted lately: the button brings it back
    assert open_demo_project(store).id == first.id
    assert store.list_trash() == []


def test_a_demo_cut_short_leaves_no_half_made_demo(tmp_path, monkeypatch):
    """The app stops while the demo's photos are copied: no project carries the demo's name
    (the button would open it, half made, from then on); the next click makes a whole one."""
    store = Store(tmp_path / "data")
    add_images = store.add_images
    calls = []

    def cut_short(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return add_images(*args, **kwargs)

    monkeypatch.setattr(store, "add_images", cut_short)
    with pytest.raises(KeyboardInterrupt):
        open_demo_project(store)
    assert store.list_projects() == [] and store.list_trash() == []
    monkeypatch.setattr(store, "add_images", add_images)
    demo = open_demo_project(store)
    assert demo.name == DEMO_PROJECT_NAME
    assert len(store.list_classes(demo.id)) == 5 and len(store.list_images(demo.id)) == 60
    assert [p.name for p in store.list_projects()] == [DEMO_PROJECT_NAME]


@pytest.mark.parametrize("dims", [2, 3])
def test_map_markers_and_legend_agree_in_2d_and_3d(dims):
    rng = np.random.default_rng(1)
    points = map_points(
        rng.normal(size=(4, 5)),
        ["bird", "bird", "fish", "fish"],
        ["e1", "e2", "e3", "e4"],
        query_embeddings=rng.normal(size=(2, 5)),
        query_predictions=["bird", "fish"],
        query_ids=["q1", "q2"],
        suggested_ids=["q2"],
    )
    figure = map_figure(rng.normal(size=(len(points.ids), dims)), points)
    names = {trace.name for trace in figure.data}
    assert {"bird · example", "bird · class centre", "fish · label next", "bird · to sort"} <= names
    symbols = {trace.name.split(" · ")[1]: trace.marker.symbol for trace in figure.data}
    assert symbols == {
        "example": "circle",
        "to sort": "diamond-open",
        "class centre": "square",
        "label next": "circle-open",
    }
    if dims == 3:  # meaningless axis numbers and names would be cut at the edges
        for axis in ("xaxis", "yaxis", "zaxis"):
            assert figure.layout.scene[axis].showticklabels is False


def visible_outside_advanced(node) -> list[str]:
    """What a page says outside its expanders: text, labels and the options of pickers."""
    if isinstance(node, Expander):
        return []
    if isinstance(node, Block):
        children = node.children.values()
        return [text for child in children for text in visible_outside_advanced(child)]
    options = getattr(node, "options", None)
    if options:  # a picker shows its options as formatted, never its raw value
        said = [str(node.label), *map(str, options)]
    else:
        said = [str(getattr(node, attribute, "")) for attribute in ("value", "label", "body")]
    return [shown(text) for text in said]


def assert_plain(at) -> None:
    said = "\n".join(visible_outside_advanced(at.main) + visible_outside_advanced(at.sidebar))
    found = [word for word in TECHNICAL if word in said]
    assert not found, f"technical words outside an advanced area: {found}"


def expander_text(at) -> str:
    return "\n".join(shown(m.value) for e in at.expander for m in e.markdown)


@pytest.mark.slow
def test_pages_speak_plainly_and_the_demo_opens_once(data_dir):  # noqa: F811
    at = start(data_dir)
    at.button(key="demo").click().run()
    assert not at.exception
    at.switch_page("pages/0_Projects.py").run()
    at.button(key="demo").click().run()  # a second click opens the same demo
    assert [p.name for p in Store(data_dir).list_projects()] == [DEMO_PROJECT_NAME]
    assert_plain(at)
    learner_picker = at.selectbox[2]
    assert learner_picker.options[0].startswith("Class centres: compares each picture")
    assert "Prototypical Networks (ProtoNet)" in expander_text(at)
    assert "tf_efficientnet_lite0" in expander_text(at)

    go(at, "3_Embedding_map")
    assert at.title[0].value == "Map of pictures"
    assert at.selectbox(key="map_layout").options == list(LAYOUT_WORDS.values())
    assert_plain(at)
    assert "PCA" in expander_text(at)
    at.radio[0].set_value(3).run()
    assert not at.exception and at.get("plotly_chart")

    go(at, "5_Evaluate")
    assert_plain(at)
    assert [m.label for m in at.metric] == ["Accuracy", "Pictures tested", "Its confidence"]
    # The interval is a caption, not a metric's arrowed "delta".
    assert all(not m.proto.delta for m in at.metric)
    assert any("95% interval" in c.value for c in at.caption)
    assert any("hidden in turn" in c.value for c in at.caption)
    assert "Calibration error (ECE)" in expander_text(at)
    at.button(key="compare").click().run()
    assert not at.exception
    assert_plain(at)
    table = at.dataframe[-2].value  # the last one is the technical table, in its expander
    assert list(table["how it learns"]) == [
        entry.display_name + (" (in use)" if name == DEFAULT_LEARNER else "")
        for name, entry in LEARNERS.items()
    ]
    assert len(at.dataframe[-1].value) == len(LEARNERS)


@pytest.mark.slow
def test_a_deleted_project_can_be_restored_from_the_message(data_dir):  # noqa: F811
    at = start(data_dir)
    at.text_input[0].input("Garden birds")
    at.button(key="FormSubmitter:new_project-Create project").click().run()
    at.button(key="delete").click().run()
    at.button(key="delete_yes").click().run()
    assert Store(data_dir).list_projects() == []
    assert any("Deleted 'Garden birds'" in shown(s.value) for s in at.success)
    at.button(key="undo_delete").click().run()
    assert not at.exception
    assert [p.name for p in Store(data_dir).list_projects()] == ["Garden birds"]
    assert any(s.value == "Open project: Garden birds" for s in at.subheader)

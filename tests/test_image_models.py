"""Choosing the image model in the app (headless, AppTest): switching reads the pictures once,
switching back reads none, a download that cannot happen says so, own weights are checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from safetensors.torch import save
from streamlit.testing.v1 import AppTest

from fsl_app.backbones import load_backbone
from fsl_app.classifier import fit_classifier
from fsl_app.embedded_set import embed_project
from fsl_app.embeddings import Embedder
from fsl_app.learners.registry import meta_trainable_learners
from fsl_app.pretrained import default_path
from fsl_app.project.store import Store

pytestmark = pytest.mark.slow

TIMEOUT = 300
ROOT = Path(__file__).resolve().parent.parent
SWITCHED = "FormSubmitter:model_settings-Save model settings"


@pytest.fixture
def app(tmp_path, monkeypatch, photos):
    """The Projects page with a project of 6 examples and 2 pictures to sort, open."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("FSL_APP_DATA", str(data_dir))
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(tmp_path / "pretrained"))
    with Store(data_dir) as store:
        project = store.create_project("Switching")
        for name in ("bird", "flower"):
            store.add_class(project.id, name)
            store.add_images(project.id, [(p.name, p.read_bytes()) for p in photos[name][:3]], name)
        store.add_images(project.id, [(p.name, p.read_bytes()) for p in photos["fruit"][:2]])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.button(key=f"open_{project.id}").click().run()
    assert not at.exception
    at.store = Store(data_dir)
    at.project_id = project.id
    return at


def shown(elements) -> list[str]:
    """Messages as a reader sees them: names are escaped markdown (``plain``)."""
    return [re.sub(r"\\(.)", r"\1", str(element.value)) for element in elements]


def backbone_setting(at: AppTest) -> str | None:
    return at.store.get_project(at.project_id).settings.get("backbone")


def test_switching_models_reads_each_picture_once_and_switching_back_reads_none(app, monkeypatch):
    forwarded: list[int] = []
    forward = Embedder._forward

    def counted(self, pixels):
        forwarded.append(len(pixels))
        return forward(self, pixels)

    monkeypatch.setattr(Embedder, "_forward", counted)

    def switch(name: str) -> int:
        forwarded.clear()
        app.selectbox(key="image_model_choice").set_value(name).run()
        app.button(key="use_image_model").click().run()
        assert not app.exception, app.exception
        assert backbone_setting(app) == name
        assert f"Now using {name}: 8 pictures ready." in shown(app.success)
        return sum(forwarded)

    assert switch("tf_efficientnet_lite1") == 8
    assert switch("tf_efficientnet_lite0") == 8  # the project had not been read with it yet
    assert switch("tf_efficientnet_lite1") == 0
    assert switch("tf_efficientnet_lite0") == 0
    # The other settings' form no longer carries the model, so saving it keeps the choice.
    app.button(key=SWITCHED).click().run()
    assert backbone_setting(app) == "tf_efficientnet_lite0"


def test_a_model_to_download_offline_says_so_in_one_sentence(app):
    """Tests run with HF_HUB_OFFLINE=1 (conftest): the hub counts as unreachable."""
    app.selectbox(key="image_model_choice").set_value("vit_small_patch14_dinov2.lvd142m").run()
    assert "GPU recommended" in " ".join(shown(app.caption))
    app.button(key="use_image_model").click().run()
    assert not app.exception and not app.error
    assert shown(app.warning) == [
        "'vit_small_patch14_dinov2.lvd142m' must be downloaded from huggingface.co, which "
        "cannot be reached from here: choose an offline model, or add its weight file below."
    ]
    assert backbone_setting(app) is None  # unchanged: still the default


def test_own_weights_are_checked_in_the_app(app, backbone):
    lite0 = save({k: v.contiguous() for k, v in backbone.model.state_dict().items()})

    def add(name: str) -> None:
        app.text_input(key="own_weights_name").input(name)
        app.file_uploader(key="own_weights_file").set_value(
            [("weights.safetensors", lite0, "application/octet-stream")]
        )
        app.run()
        app.button(key="own_weights_add").click().run()
        assert not app.exception, app.exception

    add("tf_efficientnet_lite1.in1k")  # Lite0's weights are not Lite1's
    assert (
        "does not hold weights for the timm model 'tf_efficientnet_lite1.in1k'"
        in (shown(app.error)[0])
    )
    add("tf_efficientnet_lite0.in1k")
    assert "Added 'tf_efficientnet_lite0.in1k.safetensors'" in shown(app.success)[0]
    app.selectbox(key="image_model_choice").set_value("tf_efficientnet_lite0.in1k").run()
    app.button(key="use_image_model").click().run()
    assert backbone_setting(app) == "tf_efficientnet_lite0.in1k"


# maml ships no head checkpoint (it starts from the prototypes: see its model card).
SHIPPED = [
    name
    for name in meta_trainable_learners()
    if default_path(name, "tf_efficientnet_lite0").is_file()
]


@pytest.mark.parametrize("learner", SHIPPED)
def test_meta_learned_learners_fall_back_in_one_sentence_for_another_model(
    tmp_path, photos, learner
):
    """Their shipped checkpoints are for Lite0's embeddings: with Lite1 they start without one
    and say so; with Lite0 they use theirs."""
    with Store(tmp_path / "data") as store:
        project = store.create_project("Checkpoints")
        for name in ("bird", "flower", "fruit"):
            store.add_class(project.id, name)
            store.add_images(project.id, [(p.name, p.read_bytes()) for p in photos[name][:3]], name)
        notes = {}
        for backbone in ("tf_efficientnet_lite0", "tf_efficientnet_lite1"):
            embedder = Embedder(load_backbone(backbone), device="cpu")
            embedded = embed_project(store, project.id, embedder)
            notes[backbone] = fit_classifier(embedded, learner=learner).notes[0]
    assert f"'{learner}-tf_efficientnet_lite0.safetensors'" in notes["tf_efficientnet_lite0"]
    fallback = notes["tf_efficientnet_lite1"]
    assert "no meta-trained checkpoint for the backbone 'tf_efficientnet_lite1'" in fallback
    assert "\n" not in fallback and fallback.endswith("safetensors').")  # one sentence

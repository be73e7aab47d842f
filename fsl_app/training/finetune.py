"""Fine-tune the backbone's last stage on support images (Hu et al., CVPR 2022, arXiv:2204.07305).

P>M>F's last step: before classifying, tune the feature extractor on the
user's own examples with a prototype loss on augmented views of them. Each step
draws two augmentations of every support image (timm's own training
transform for the backbone); the first views make the class prototypes, the
second are classified by cosine similarity to them, and the cross-entropy
moves the last stage (and the layers after it, but not the ImageNet
classifier) a little, with a small learning rate. Batch-norm statistics stay
frozen: a handful of images would make them noise.

The result is a new :class:`~fsl_app.backbones.Backbone` whose ``id`` differs
from the original, so its embeddings never mix with the base model's in the
cache.

Two ways to fine-tune are offered to the user (:data:`FINE_TUNING`): P>M>F (above, from the
images) and last-stage MAML (:class:`fsl_app.learners.maml.LastStageMAML`: a few first-order
steps from a meta-learned initialisation of the last stage, on the cached activations that enter
it, :mod:`fsl_app.stage_cache`). :func:`estimate_seconds` times a tiny run of each on the device
in use and extrapolates, so the app and the CLI can say how long it will take, and
:func:`refusal` refuses, with a sentence, only what would take many minutes
(:data:`MAX_SECONDS`) unless forced.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fsl_app.backbones import Backbone, classifier_prefixes
from fsl_app.embeddings import autocast_for, resolve_device

# name -> what it does, in words a user reads in the app and the CLI's help
FINE_TUNING = {
    "none": "no fine-tuning: the image model as shipped (fastest)",
    "last-stage-maml": "last-stage MAML: a few steps on the image model's last stage, from a "
    "start meta-learned on clip art, on your examples and their flipped and zoomed views",
    "pmf": "P>M>F: the image model's last stage tuned on augmented copies of your examples "
    "(50 steps)",
}
MAX_SECONDS = 300.0  # longer than this is "many minutes": refused unless forced
PMF_STEPS = 50


class FineTuningNeedsGPUError(RuntimeError):
    """Fine-tuning would take many minutes on this device and was not forced."""


def fine_tune_backbone(
    backbone: Backbone,
    images: Sequence[Image.Image],
    labels: Sequence,
    *,
    steps: int = 50,
    device: str | torch.device = "auto",
    force: bool = False,
    lr: float = 1e-4,
    temperature: float = 0.1,
) -> Backbone:
    """A copy of ``backbone`` whose last stage is tuned on ``images`` (one label each).

    ``backbone`` itself is left as it was. Raises :class:`FineTuningNeedsGPUError`, whose
    sentence gives the estimate, when it would take longer than :data:`MAX_SECONDS` on
    ``device``, unless ``force=True``.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if not force:
        seconds = estimate_seconds("pmf", backbone, len(images), 0, device, steps=steps)
        sentence = refusal("pmf", seconds, device)
        if sentence:
            raise FineTuningNeedsGPUError(sentence)
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    if len(images) != len(targets):
        raise ValueError(f"Got {len(images)} images but {len(targets)} labels.")
    if len(classes) < 2:
        raise ValueError("Fine-tuning needs examples of at least two classes.")
    targets = torch.as_tensor(targets, dtype=torch.long, device=device)
    model = copy.deepcopy(backbone.model).to(device).eval()
    trainable = last_stage_parameters(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable.values():
        parameter.requires_grad_(True)
    augment = timm.data.create_transform(**backbone.data_config, is_training=True)
    optimizer = torch.optim.Adam(trainable.values(), lr=lr)
    autocast = autocast_for(device)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    for _ in range(steps):
        views = torch.stack([augment(image) for image in [*images, *images]]).to(device)
        with autocast:
            features = model.forward_head(model.forward_features(views), pre_logits=True)
        shot_views, query_views = F.normalize(features.float(), dim=1).chunk(2)
        prototypes = torch.zeros(len(classes), shot_views.shape[1], device=device)
        prototypes = prototypes.index_add(0, targets, shot_views)
        logits = query_views @ F.normalize(prototypes, dim=1).T / temperature
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    model.requires_grad_(False).cpu()
    return Backbone(
        backbone.name,
        model,
        backbone.data_config,
        f"{backbone.weights_source}, last stage fine-tuned on {len(images)} images ({steps} steps)",
        _digest(backbone.weights_digest, trainable),
    )


def last_stage_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of the model's last feature stage and of the layers after it.

    The stages are timm's ``feature_info``; the ImageNet classifier is left out
    (embeddings are taken before it).
    """
    feature_info = getattr(model, "feature_info", None)
    if not feature_info:
        raise ValueError(f"{type(model).__name__} does not tell timm where its stages are.")
    last_stage = f"{feature_info[-1]['module']}."
    names = [name for name, _ in model.named_parameters()]
    start = next(i for i, name in enumerate(names) if name.startswith(last_stage))
    classifier = classifier_prefixes(model)
    parameters = dict(model.named_parameters())
    return {n: parameters[n] for n in names[start:] if not n.startswith(classifier)}


def _digest(base_digest: str, tuned: dict[str, nn.Parameter]) -> str:
    """A new weights digest: the base model's, plus the tuned tensors' bytes."""
    sha = hashlib.sha256(base_digest.encode())
    for name, parameter in tuned.items():
        sha.update(name.encode())
        sha.update(parameter.detach().float().cpu().numpy().tobytes())
    return sha.hexdigest()


def tuned_copy(backbone: Backbone, stage: dict[str, torch.Tensor], what: str) -> Backbone:
    """A copy of ``backbone`` whose last stage (:class:`fsl_app.stage_cache.LastStage` names)
    holds ``stage``; its id is new, so its embeddings never mix with the base model's."""
    from fsl_app.stage_cache import LastStage

    model = copy.deepcopy(backbone.model).cpu().eval()
    tail = LastStage(Backbone(backbone.name, model, backbone.data_config, "", "")).tail
    with torch.no_grad():
        for name, parameter in tail.named_parameters():
            parameter.copy_(stage[name].to(parameter.dtype))
    model.requires_grad_(False)
    tuned = dict(tail.named_parameters())
    return Backbone(
        backbone.name,
        model,
        backbone.data_config,
        f"{backbone.weights_source}, {what}",
        _digest(backbone.weights_digest, tuned),
    )


def last_stage_maml_backbone(
    backbone: Backbone,
    sources: Sequence,
    labels: Sequence,
    *,
    device: str | torch.device = "auto",
    cache=None,
    checkpoint=None,
    progress=None,
) -> Backbone:
    """A copy of ``backbone`` whose last stage last-stage MAML adapted to ``sources`` (image
    files or bytes, one label each) and their flipped and zoomed views.

    The activations entering the stage come from (and go to) ``cache``
    (:class:`fsl_app.stage_cache.ActivationCache`; None: the default one next to the embedding
    cache). ``checkpoint`` defaults to the shipped initialisation for the backbone
    (:func:`fsl_app.stage_cache.find_stage_initialisation`; the ImageNet stage without one).
    Unreadable images are left out; ValueError when fewer than two classes remain.
    """
    from fsl_app.learners.maml import LastStageMAML
    from fsl_app.stage_cache import (
        VIEWS,
        LastStage,
        embed_views,
        find_stage_initialisation,
        open_activation_cache,
    )

    device = device if isinstance(device, torch.device) else resolve_device(device)
    cache = cache if cache is not None else open_activation_cache()
    views = embed_views(backbone, sources, views=VIEWS, cache=cache, device=device,
                        progress=progress)  # fmt: skip
    embedded = views["original"][0]
    kept = np.asarray(labels)[embedded.indices]
    classes, targets = np.unique(kept, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("Fine-tuning needs readable examples of at least two classes.")
    activations = torch.cat([acts for _, acts in views.values()])
    targets = torch.as_tensor(np.tile(targets, len(views)), dtype=torch.long)
    if checkpoint is None:
        checkpoint = find_stage_initialisation(backbone)
    learner = LastStageMAML(LastStage(backbone), checkpoint, device=device)
    learner.fit(activations, targets)
    backbone.model.cpu()
    return tuned_copy(
        backbone,
        learner.stage_,
        f"last stage adapted by last-stage MAML on {len(kept)} examples ({learner.steps_} steps)",
    )


def estimate_seconds(
    method: str,
    backbone: Backbone,
    n_examples: int,
    n_images: int,
    device: str | torch.device = "auto",
    *,
    steps: int | None = None,
) -> float:
    """How long ``method`` (a :data:`FINE_TUNING` name) would take on ``device`` for
    ``n_examples`` examples, then embedding them and ``n_images`` pictures with the tuned model.

    Times a tiny run (a forward pass of two images, a backward pass through the model or its
    last stage) and extrapolates linearly; the first embedding of a picture, which every
    method pays, is left out.
    """
    if method == "none":
        return 0.0
    if method not in FINE_TUNING:
        raise ValueError(f"Unknown fine-tuning '{method}': use one of {', '.join(FINE_TUNING)}.")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    forward, backward = _seconds_per_image(backbone, device, last_stage=method != "pmf")
    embed_again = (n_examples + n_images) * forward
    if method == "pmf":
        return (steps or PMF_STEPS) * 2 * n_examples * backward + embed_again
    from fsl_app.learners.maml import DEFAULT_STAGE_STEPS
    from fsl_app.stage_cache import VIEWS

    views = len(VIEWS) * n_examples
    return views * forward + (steps or DEFAULT_STAGE_STEPS + 1) * views * backward + embed_again


def refusal(method: str, seconds: float, device: str | torch.device) -> str | None:
    """The sentence refusing ``method`` when ``seconds`` is many minutes, else None."""
    if seconds <= MAX_SECONDS:
        return None
    where = "this CPU" if torch.device(device).type == "cpu" else f"this {device}"
    return (
        f"Fine-tuning ({FINE_TUNING[method].split(':')[0]}) would take about "
        f"{describe_seconds(seconds)} on {where}. Use fewer examples, a GPU, or no "
        "fine-tuning; or ask for it anyway (force=True, or --force-fine-tune)."
    )


def describe_seconds(seconds: float) -> str:
    """ "12 s", "4 min", "1.5 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _seconds_per_image(
    backbone: Backbone, device: torch.device, *, last_stage: bool
) -> tuple[float, float]:
    """Measured seconds per image of a forward pass of the whole model, and of a forward and
    backward pass through the whole model (``last_stage=False``) or its last stage."""
    import time

    from fsl_app.stage_cache import LastStage

    model = backbone.model.to(device)
    pixels = torch.zeros(2, *backbone.input_size, device=device)
    autocast = autocast_for(device)

    def timed(fn) -> float:
        fn()  # warm-up: the first call pays for allocation and kernel choice
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / len(pixels)

    def forward():
        with torch.inference_mode(), autocast:
            backbone.embed(pixels)

    if last_stage:
        stage = LastStage(backbone)
        with torch.no_grad():
            activations = stage.stem(pixels)
        params = {k: v.to(device).requires_grad_() for k, v in stage.parameters().items()}

        def backward():
            with autocast:
                loss = stage.pooled(activations, params).float().sum()
            torch.autograd.grad(loss, list(params.values()))
    else:
        trainable = list(last_stage_parameters(model).values())

        def backward():
            for parameter in trainable:
                parameter.requires_grad_(True)
            try:
                with autocast:
                    loss = model.forward_head(model.forward_features(pixels), pre_logits=True)
                torch.autograd.grad(loss.float().sum(), trainable)
            finally:
                for parameter in trainable:
                    parameter.requires_grad_(False)

    return timed(forward), timed(backward)


def fine_tune_examples(
    method: str,
    backbone: Backbone,
    paths: Sequence,
    labels: Sequence,
    *,
    device: str | torch.device = "auto",
    progress=None,
) -> Backbone:
    """``backbone`` fine-tuned by ``method`` (a :data:`FINE_TUNING` name other than "none") on
    the example files ``paths`` with their ``labels``; unreadable files are left out.

    The caller has shown :func:`estimate_seconds` and checked :func:`refusal`.
    """
    if method == "last-stage-maml":
        return last_stage_maml_backbone(backbone, paths, labels, device=device, progress=progress)
    if method != "pmf":
        raise ValueError(f"Unknown fine-tuning '{method}': use one of {', '.join(FINE_TUNING)}.")
    from fsl_app.images import ImageLoadError, load_image

    images, kept = [], []
    for path, label in zip(paths, labels, strict=True):
        try:
            images.append(load_image(path, min_side=backbone.resize_side).image)
        except ImageLoadError:
            continue
        kept.append(label)
    return fine_tune_backbone(backbone, images, kept, steps=PMF_STEPS, device=device, force=True)

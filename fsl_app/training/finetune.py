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
cache. On a CPU this takes minutes per class, so it is refused unless forced.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fsl_app.backbones import Backbone, classifier_prefixes
from fsl_app.embeddings import resolve_device

CPU_REFUSAL = (
    "Fine-tuning the backbone needs a GPU; on this CPU it would take minutes per class. "
    "Pass force=True to do it anyway."
)


class FineTuningNeedsGPUError(RuntimeError):
    """Fine-tuning was asked for on a CPU without ``force=True``."""


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

    ``backbone`` itself is left as it was. Raises :class:`FineTuningNeedsGPUError`
    on a CPU unless ``force=True``.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if device.type == "cpu" and not force:
        raise FineTuningNeedsGPUError(CPU_REFUSAL)
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
    autocast = (
        torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    )
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

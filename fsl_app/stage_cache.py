"""Activations entering the backbone's last stage, once per (backbone, image, view).

Last-stage MAML (:class:`fsl_app.learners.maml.LastStageMAML`) adapts the backbone's last
stage to the user's examples. Running the whole network at every inner step would take
minutes on a CPU; the stage's input does not change while the stage adapts, so it is computed
once per image and kept, like the pooled embeddings, in an SQLite cache keyed by (backbone id,
sha256 of the image bytes), here with the view and :data:`STAGE_VERSION` in the key. For
EfficientNet-Lite0 at 224 px that input is 192 x 7 x 7 per image, stored as float16 (18 KB).
Adaptation then runs only the last stage (``blocks[-1]``, ``conv_head``, ``bn2`` and the
pooling): about a fiftieth of the network's work per image.

A few augmented views of each image (:data:`VIEWS`: a horizontal flip and a zoom on the
centre) are deterministic, so they are cached the same way and computed once; the inner loop
uses them as extra support examples.

The same code runs on a GPU (mixed precision) and on the CPU.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsl_app.embeddings import (
    PIPELINE_VERSION,
    EmbeddedImages,
    Embedder,
    EmbeddingCache,
    ImageSource,
    NoCache,
    ProgressCallback,
    default_cache_path,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fsl_app.backbones import Backbone

# Bump when the split point or a view changes what an image's activations are.
STAGE_VERSION = 1
VIEWS = ("original", "flip", "zoom")
ZOOM = 0.8  # the zoom view keeps the centre 80% of the crop, resized back


class ActivationCache(EmbeddingCache):
    """:class:`~fsl_app.embeddings.EmbeddingCache` holding float16 activations (flattened)."""

    dtype = np.float16


def default_activation_cache_path() -> Path:
    """Next to the embedding cache: ``stage_activations.sqlite``."""
    return default_cache_path().with_name("stage_activations.sqlite")


class LastStage:
    """A backbone split where its last stage begins: :meth:`stem` up to it, :meth:`pooled` after.

    The last stage is timm's last ``feature_info`` stage (``blocks[-1]`` of an EfficientNet),
    followed by the 1x1 head convolution, its batch norm and activation, and the pooling: the
    layers P>M>F fine-tuning moves too (:func:`fsl_app.training.finetune.last_stage_parameters`).
    Batch norms use their ImageNet statistics (eval mode) whatever the parameters.
    """

    def __init__(self, backbone: Backbone):
        from torch import nn

        model = backbone.model
        if not all(hasattr(model, name) for name in ("conv_stem", "bn1", "blocks", "conv_head")):
            raise ValueError(
                f"Adapting the last stage works with EfficientNet-style image models "
                f"(tf_efficientnet_lite0, lite1, lite2); '{backbone.name}' is not one. "
                "Choose one of those, or a learner without fine-tuning."
            )
        self.backbone = backbone
        self.model = model
        self.tail: nn.Module = nn.Sequential(model.blocks[-1], model.conv_head, model.bn2).eval()
        # functional_call swaps the tail's weights in place while it runs: one at a time (the
        # app fits in several threads, and the stage of a backbone is shared, last_stage_for).
        self._swapping = threading.Lock()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the activations entering the last stage."""
        from torch import nn

        first_conv = next(m for m in self.tail.modules() if isinstance(m, nn.Conv2d))
        channels = first_conv.in_channels
        reduction = self.model.feature_info[-1]["reduction"]
        _, height, width = self.backbone.input_size
        return channels, -(-height // reduction), -(-width // reduction)

    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        """Activations (n, C, H, W) entering the last stage for preprocessed ``pixels``."""
        x = self.model.bn1(self.model.conv_stem(pixels))
        for block in self.model.blocks[:-1]:
            x = block(x)
        return x

    def parameters(self) -> dict[str, torch.Tensor]:
        """The last stage's parameters (detached copies), named as :meth:`pooled` takes them."""
        return {k: v.detach().clone() for k, v in self.tail.named_parameters()}

    def pooled(
        self, activations: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Pooled features (n, embedding_dim) of ``activations`` through the last stage.

        ``params`` (names as :meth:`parameters`) replace the stage's own weights, so gradients
        flow to them; None uses the backbone's weights.
        """
        from torch.func import functional_call

        if params is None:
            x = self.tail(activations)
        else:
            with self._swapping:
                x = functional_call(self.tail, params, (activations,))
        return self.model.forward_head(x, pre_logits=True)

    def pooled_in_batches(
        self,
        activations: torch.Tensor,
        params: dict[str, torch.Tensor] | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> torch.Tensor:
        """:meth:`pooled` of many ``activations`` (n, C, H, W), a batch at a time on ``device``
        (mixed precision on a GPU), without gradients: float32 (n, embedding_dim) on the CPU."""
        import torch

        from fsl_app.embeddings import autocast_for

        parts = [torch.zeros(0, self.backbone.embedding_dim)]
        with torch.no_grad(), autocast_for(torch.device(device)):
            for start in range(0, len(activations), batch_size):
                batch = activations[start : start + batch_size].to(device).float()
                parts.append(self.pooled(batch, params).float().cpu())
        return torch.cat(parts)

    @property
    def input_numel(self) -> int:
        """Numbers per picture entering the stage (C * H * W): the width of its cached rows."""
        channels, height, width = self.input_shape
        return channels * height * width


def view_of(pixels: torch.Tensor, view: str) -> torch.Tensor:
    """``pixels`` (n, 3, H, W) as one of :data:`VIEWS`."""
    import torch.nn.functional as F

    if view == "original":
        return pixels
    if view == "flip":
        return pixels.flip(-1)
    if view == "zoom":
        height, width = pixels.shape[-2:]
        top, left = round(height * (1 - ZOOM) / 2), round(width * (1 - ZOOM) / 2)
        centre = pixels[..., top : height - top, left : width - left]
        return F.interpolate(centre, size=(height, width), mode="bilinear", align_corners=False)
    raise ValueError(f"Unknown view '{view}': use one of {', '.join(VIEWS)}.")


class StageEmbedder(Embedder):
    """:class:`~fsl_app.embeddings.Embedder` whose vectors are last-stage inputs of one view.

    Reading, hashing, decoding, batching and the cache are the Embedder's; only the forward
    pass (the network up to the last stage, on the view) and the cache key differ.
    ``embed(...).embeddings`` holds the activations flattened, float32 (n, C*H*W);
    :meth:`activations` gives them their shape back.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        view: str = "original",
        device: str | torch.device = "auto",
        batch_size: int = 32,
        cache: ActivationCache | NoCache | None = None,
    ):
        if view not in VIEWS:
            raise ValueError(f"Unknown view '{view}': use one of {', '.join(VIEWS)}.")
        super().__init__(
            backbone,
            device=device,
            batch_size=batch_size,
            cache=cache if cache is not None else ActivationCache(None),
        )
        self.view = view
        self.stage = LastStage(backbone)
        self.cache_key = f"{backbone.id}/v{PIPELINE_VERSION}/stage{STAGE_VERSION}/{view}"

    def activations(self, embedded: EmbeddedImages) -> torch.Tensor:
        """``embedded.embeddings`` as a float32 tensor of shape (n, C, H, W)."""
        import torch

        return torch.as_tensor(embedded.embeddings).reshape(-1, *self.stage.input_shape)

    def _forward(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            pixels = view_of(pixels.to(self.device, non_blocking=True), self.view)
            activations = self.stage.stem(pixels)
        self.images_forwarded += len(pixels)
        return activations.float().flatten(1).cpu().numpy()


def embed_views(
    backbone: Backbone,
    sources: Sequence[ImageSource],
    *,
    views: Sequence[str] = ("original",),
    cache: ActivationCache | NoCache | None = None,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
) -> dict[str, tuple[EmbeddedImages, torch.Tensor]]:
    """Each view's :class:`EmbeddedImages` and activations (n, C, H, W) of ``sources``."""
    out = {}
    for view in views:
        embedder = StageEmbedder(backbone, view=view, device=device, cache=cache)
        embedded = embedder.embed(sources, progress=progress)
        out[view] = (embedded, embedder.activations(embedded))
    return out


def stage_embedder_beside(embedder: Embedder) -> StageEmbedder:
    """A :class:`StageEmbedder` (original view) on ``embedder``'s image model and device, its
    cache beside the embedder's: ``stage_activations.sqlite`` in the same folder, in memory for
    an in-memory cache, nothing kept for :class:`~fsl_app.embeddings.NoCache`."""
    cache = embedder.cache
    if isinstance(cache, NoCache):
        kept: ActivationCache | NoCache = NoCache()
    elif getattr(cache, "path", None) is None:
        kept = ActivationCache(None)
    else:
        kept = _activation_cache_at(str(cache.path.with_name("stage_activations.sqlite")))
    return StageEmbedder(embedder.backbone, device=embedder.device, cache=kept)


@functools.lru_cache(maxsize=4)
def _activation_cache_at(path: str) -> ActivationCache:
    """One open cache per file and process (SQLite connections are shared safely)."""
    return ActivationCache(path)


def open_activation_cache(path: str | os.PathLike | None = "default") -> ActivationCache:
    """The activation cache at ``path`` (``"default"``: next to the embedding cache)."""
    return ActivationCache(default_activation_cache_path() if path == "default" else path)


def stage_start_shipped(backbone_name: str) -> bool:
    """Whether last-stage MAML has a meta-learned start for ``backbone_name`` under
    ``pretrained/`` (``maml-stage-<backbone>.safetensors``): the only case in which the
    ``maml`` learner adapts the image model's last stage (elsewhere it adapts its head)."""
    from fsl_app import pretrained

    return pretrained.default_path("maml-stage", backbone_name).is_file()


@functools.lru_cache(maxsize=2)
def last_stage_for(backbone_name: str) -> LastStage:
    """The last stage of ``backbone_name`` (its model loaded once per process and kept: every
    fit of last-stage MAML, calibration's refits included, runs through the same one)."""
    from fsl_app.backbones import load_backbone

    return LastStage(load_backbone(backbone_name))


def find_stage_initialisation(backbone: Backbone, path: str | os.PathLike | None = None):
    """Last-stage MAML's meta-learned initialisation for ``backbone``, or None if none is shipped.

    ``path`` defaults to ``pretrained/maml-stage-<backbone>.safetensors``. A checkpoint made for
    another backbone (or other weights of it) is refused with
    :class:`fsl_app.pretrained.CheckpointError`, whose sentence says what to do.
    """
    from fsl_app import pretrained

    learner = "maml-stage"
    if path is None:
        path = pretrained.default_path(learner, backbone.name)
        if not Path(path).is_file():
            return None
    checkpoint = pretrained.load(path, learner)
    made_for = checkpoint.metadata.get("backbone_id", "")
    if made_for != backbone.id:
        raise pretrained.CheckpointError(
            f"The last-stage MAML checkpoint '{Path(path).name}' was meta-learned for the image "
            f"model {made_for or checkpoint.backbone}, not {backbone.id}: its weights belong to "
            "that model's last stage. Choose that image model, or meta-train one for this model "
            "with `python -m fsl_app meta-train --learner maml --last-stage`."
        )
    return checkpoint

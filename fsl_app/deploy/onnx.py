"""A bundle as one ONNX graph, backbone and head, for runtimes without Python or torch.

The graph takes ``pixels`` of shape (batch, 3, H, W), float32, preprocessed
exactly as the backbone's own transform does (:attr:`Backbone.transform`:
resize, centre crop, scale to [0, 1], normalise), and answers what
:meth:`CalibratedClassifier.predict` answers: ``probabilities`` (batch,
n_classes) float32, calibrated (softmax of the logits divided by the fitted
temperature), ``distance`` (batch,) float32, the open-set cosine distance to
the nearest class, and ``unknown`` (batch,) bool, "none of these". The batch
axis is dynamic. The model's ``metadata_props`` say the rest, each value JSON:
class names in column order, the preprocessing step by step, temperature,
threshold (null when "none of these" is off), backbone, learner and the
fsl_app version; :func:`onnx_metadata` reads them back.

The head is the fitted learner's logits as a torch module
(:meth:`FewShotLearner.logits_module`): its own torch code where torch.export
can trace it (ProtoNet with the cosine metric, MAML, relation, siamese); the
linear probe and matching networks carry their fitted state over into small
modules of their own. :data:`ONNX_LEARNERS` are the registry's ONNX-able
learners.

A model that adapts the image model's last stage (MAML, ``classifier.needs_last_stage``)
takes rows of the embedding followed by the activations entering that stage: its graph runs the
backbone up to that stage once, rounds the activations to float16 as the activation cache
keeps them, pools them through the backbone's own last stage for the embedding, and hands the
row to the learner's module (its copy of the adapted stage); "none of these" reads the
embedding part. Every export is checked: onnxruntime runs the graph on
a probe batch and must agree with torch, or nothing is written.

onnx, onnxscript (torch's exporter) and onnxruntime are imported only here,
and only when called, so ``import fsl_app`` stays light.
"""

from __future__ import annotations

import importlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fsl_app import __version__
from fsl_app.backbones import Backbone
from fsl_app.classifier import CalibratedPredictions
from fsl_app.deploy.bundle import Bundle, BundleError, check_backbone
from fsl_app.files import write_atomically
from fsl_app.learners import LEARNERS

if TYPE_CHECKING:
    import onnx
    import onnxruntime

FORMAT_NAME = "fsl_app.onnx"
FORMAT_VERSION = 1
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("probabilities", "distance", "unknown")
# Supported by onnxruntime >= 1.14; the opset torch's exporter translates to natively, so no
# version conversion runs.
OPSET = 18
# onnxruntime and torch sum in different orders: on real photos probabilities differed by at
# most 2e-6.
TOLERANCE = 1e-4
PROBE_BATCH = 2
_EMBEDDING = "embedding"
_ROWS = "rows"  # embedding + last-stage activations, for a model that adapts that stage
_HEAD_PREFIX = "head/"
_INSTALL = "pip install onnx onnxruntime onnxscript"
_DOC = (
    "Few-shot image classifier exported by fsl_app. Input 'pixels' (batch, 3, H, W) float32, "
    "preprocessed as the metadata's 'preprocessing' says; outputs 'probabilities' (batch, "
    "n_classes), calibrated, columns in the metadata's 'classes' order, 'distance' (batch,) "
    "and 'unknown' (batch,): none of these classes."
)


class OnnxExportError(BundleError):
    """A model cannot be written or read as ONNX; the message says what to do instead."""


# Which learners export comes from the registry; how each one's logits become a torch module
# comes from the learner itself (FewShotLearner.logits_module). The export check below confirms
# the module scores as the learner does.
ONNX_LEARNERS: tuple[str, ...] = tuple(
    name for name, entry in LEARNERS.items() if entry.onnx_exportable
)

# The backbone's graph is the slow part of an export (about 10 s on 2 CPU cores) and the same
# for every head, so the last one is kept: the id names the weights and the preprocessing.
_backbone_graph: dict[str, onnx.ModelProto] = {}


def export_onnx(bundle: Bundle, backbone: Backbone, path: str | os.PathLike) -> Path:
    """Write ``bundle`` on ``backbone`` to ``path`` as one ONNX graph (see the module docstring).

    ``backbone`` must be the one the bundle was made with (:func:`check_backbone`).
    A learner outside :data:`ONNX_LEARNERS`, or missing packages, raise
    :class:`OnnxExportError`. The file is written atomically, after
    onnxruntime has been checked to answer like torch on a probe batch.
    """
    check_backbone(bundle, backbone)
    check_onnx_export(bundle.learner)
    onnx = _require("onnx")
    device = next(backbone.model.parameters()).device
    backbone.to("cpu")
    try:
        wide = bundle.classifier.needs_last_stage
        probe = _probe_pixels(backbone)
        with torch.no_grad():
            rows = _EmbedWithStage(backbone)(probe) if wide else backbone.embed(probe)
        try:
            logits = bundle.classifier.learner_.logits_module()
        except ValueError as err:
            raise OnnxExportError(str(err)) from None
        head = _Head(bundle, logits)
        between = _ROWS if wide else _EMBEDDING
        graph = onnx.compose.merge_models(
            _backbone_onnx(backbone, wide=wide),
            _head_onnx(head, rows, between),
            io_map=[(between, between)],
            producer_name="fsl_app",
            producer_version=__version__,
            name=f"fsl_app {bundle.learner} on {backbone.name}",
            doc_string=_DOC,
        )
    finally:
        backbone.to(device)
    onnx.helper.set_model_props(graph, _metadata(bundle, backbone))
    data = graph.SerializeToString()
    classifier = bundle.classifier
    _check(data, probe, classifier.predict_calibrated(rows.numpy()), classifier.threshold_)
    return write_atomically(path, data)


def check_onnx_export(learner: str) -> None:
    """Raise :class:`OnnxExportError` unless a ``learner`` model can be exported here.

    Cheap, so a caller can refuse before fitting anything.
    """
    if learner not in ONNX_LEARNERS:
        raise OnnxExportError(
            f"The learner '{learner}' cannot be exported to ONNX yet: export a model "
            f"made with one of {', '.join(ONNX_LEARNERS)}."
        )
    for module in ("onnx", "onnx.compose", "onnxscript", "onnxruntime"):
        _require(module)


class OnnxModel:
    """An exported model in onnxruntime on the CPU: ``metadata`` and :meth:`predict`."""

    def __init__(self, path_or_bytes: str | os.PathLike | bytes):
        ort = _require("onnxruntime")
        source = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
        try:
            self.session: onnxruntime.InferenceSession = ort.InferenceSession(
                source, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own types for missing or bad files
            raise OnnxExportError(f"This is not a readable ONNX model ({err}).") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("format") != json.dumps(FORMAT_NAME):
            raise OnnxExportError("This ONNX model was not exported by fsl_app.")
        self.metadata: dict[str, Any] = {key: json.loads(value) for key, value in props.items()}

    def predict(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """``probabilities`` (n, n_classes), ``distance`` (n,), ``unknown`` (n,) for ``pixels``.

        ``pixels`` (n, 3, H, W) are preprocessed as ``metadata["preprocessing"]`` says.
        """
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def predict_onnx(path: str | os.PathLike, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """:meth:`OnnxModel.predict` of the model at ``path``; keep an :class:`OnnxModel` to reuse."""
    return OnnxModel(path).predict(pixels)


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an exported model, values decoded from JSON (see the module docstring)."""
    return OnnxModel(path).metadata


def preprocessing(backbone: Backbone) -> dict[str, Any]:
    """How an image becomes ``pixels``: ``backbone.transform``'s steps, read from the transform.

    Plus how fsl_app decodes pictures before it and timm's data config behind it.
    """
    steps = []
    for step in getattr(backbone.transform, "transforms", [backbone.transform]):
        kind = type(step).__name__
        if kind == "Resize":
            size = step.size if isinstance(step.size, int) else list(step.size)
            if isinstance(size, list) and len(size) == 1:
                size = size[0]
            key = "shorter_side" if isinstance(size, int) else "size"
            steps.append(
                {
                    "op": "resize",
                    key: size,
                    "interpolation": step.interpolation.value,
                    "antialias": bool(step.antialias),
                }
            )
        elif kind == "CenterCrop":
            steps.append({"op": "center_crop", "size": list(step.size)})
        elif kind in ("ToTensor", "MaybeToTensor"):
            steps.append({"op": "to_tensor", "does": "RGB HWC uint8 -> CHW float32 / 255"})
        elif kind == "Normalize":
            steps.append({"op": "normalize", "mean": _floats(step.mean), "std": _floats(step.std)})
        else:
            steps.append({"op": kind, "repr": repr(step)})
    return {
        "image": (
            "decoded upright (EXIF orientation applied) as RGB; a large picture may first be "
            "reduced by a whole factor, never below the resize side (fsl_app.images.load_image "
            f"with min_side={backbone.resize_side})"
        ),
        "steps": steps,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *backbone.input_size],
            "layout": "NCHW",
            "dtype": "float32",
        },
        "timm_data_config": backbone.data_config,
    }


class _Head(nn.Module):
    """Rows (n, width) to probabilities (n, n_classes), distance (n,) and unknown (n,).

    The rows are the classifier's: embeddings (n, dim), or embeddings followed by the
    activations entering the last stage, whose embedding part "none of these" reads.

    Mirrors :meth:`CalibratedClassifier.predict`, in float64 where it is:
    the softmax of the logits over the temperature, and the open-set
    detector's distance (power normalisation, cosine to the nearest
    prototype) against its threshold, infinite when strictness is 0, and
    nearer to a "none of these" picture than to every prototype when it has any.
    """

    def __init__(self, bundle: Bundle, logits: nn.Module):
        super().__init__()
        classifier = bundle.classifier
        self.logits = logits
        self.embedding_dim = classifier.embedding_dim_ if classifier.needs_last_stage else None
        self.register_buffer(
            "temperature", torch.tensor(classifier.temperature_, dtype=torch.float64)
        )
        prototypes = torch.as_tensor(classifier.open_set_.prototypes_, dtype=torch.float64)
        self.register_buffer("prototypes", prototypes)
        self.register_buffer("threshold", torch.tensor(classifier.threshold_, dtype=torch.float64))
        open_set = classifier.open_set_
        # An empty matrix has no maximum: the graph gets the comparison only when it is needed.
        self.negatives = (
            torch.as_tensor(open_set.negatives_, dtype=torch.float64)
            if len(open_set.negatives_) and classifier.strictness > 0
            else None
        )

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.logits(rows).double()
        probabilities = (logits / self.temperature).softmax(dim=1)
        embedding = rows if self.embedding_dim is None else rows[:, : self.embedding_dim]
        features = embedding.double()
        # fsl_app.trust.open_set.power_normalize: signed square root, then unit rows.
        features = F.normalize(features.sign() * features.abs().sqrt(), dim=1)
        distance = 1 - (features @ self.prototypes.T).amax(dim=1)
        unknown = distance > self.threshold
        if self.negatives is not None:
            unknown = unknown | (1 - (features @ self.negatives.T).amax(dim=1) < distance)
        return probabilities.float(), distance.float(), unknown


class _Embed(nn.Module):
    """:meth:`Backbone.embed` as a module, so its weights are the graph's."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.model = backbone.model
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed(pixels)


class _EmbedWithStage(nn.Module):
    """Pixels to rows (n, dim + C*H*W): the pooled embedding followed by the activations
    entering the last stage, rounded to float16 as :func:`~fsl_app.embedded_set.with_last_stage`
    keeps them. The backbone runs once: the embedding is those activations (unrounded) through
    the backbone's own last stage, the layers :meth:`Backbone.embed` ends with."""

    def __init__(self, backbone: Backbone):
        from fsl_app.stage_cache import LastStage

        super().__init__()
        self.model = backbone.model
        self.stage = LastStage(backbone)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        activations = self.stage.stem(pixels)
        embedding = self.stage.pooled(activations)
        kept = activations.to(torch.float16).to(torch.float32).flatten(1)
        return torch.cat([embedding, kept], dim=1)


def _backbone_onnx(backbone: Backbone, *, wide: bool = False) -> onnx.ModelProto:
    key = f"{backbone.id}/{_ROWS if wide else _EMBEDDING}"
    cached = _backbone_graph.get(key)
    if cached is None:
        module, output = (_EmbedWithStage, _ROWS) if wide else (_Embed, _EMBEDDING)
        cached = _to_onnx(module(backbone), _probe_pixels(backbone), INPUT_NAME, [output])
        _backbone_graph.clear()
        _backbone_graph[key] = cached
    return cached


def _head_onnx(head: _Head, rows: torch.Tensor, input_name: str) -> onnx.ModelProto:
    onnx = _require("onnx")
    graph = _to_onnx(head, rows, input_name, list(OUTPUT_NAMES))
    # The two graphs were named independently: prefix the head's inner names, not its ends.
    return onnx.compose.add_prefix(graph, _HEAD_PREFIX, rename_inputs=False, rename_outputs=False)


def _to_onnx(
    module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str]
) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return program.model_proto


def _probe_pixels(backbone: Backbone) -> torch.Tensor:
    """A fixed batch of noise images: exporting traces it and the check runs it."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(PROBE_BATCH, *backbone.input_size, generator=generator)


def _check(
    data: bytes, probe: torch.Tensor, expected: CalibratedPredictions, threshold: float
) -> None:
    """Refuse a graph that onnxruntime runs differently from torch on the probe batch.

    ``unknown`` is compared only where the distance is not within the tolerance of
    ``threshold``: there, rounding may tip it either way.
    """
    got = OnnxModel(data).predict(probe.numpy())
    gap = max(
        float(np.abs(got["probabilities"] - expected.probabilities).max()),
        float(np.abs(got["distance"] - expected.distance).max()),
    )
    clear = np.abs(expected.distance - threshold) > TOLERANCE
    if gap > TOLERANCE or (got["unknown"] != expected.unknown)[clear].any():
        raise OnnxExportError(
            f"The ONNX graph answers differently from torch (by up to {gap:.2g}); "
            "please report this with the model."
        )


def _metadata(bundle: Bundle, backbone: Backbone) -> dict[str, str]:
    classifier = bundle.classifier
    threshold = classifier.threshold_
    values = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "classes": list(bundle.classes),
        "preprocessing": preprocessing(backbone),
        "temperature": float(classifier.temperature_),
        "threshold": float(threshold) if np.isfinite(threshold) else None,
        "strictness": float(classifier.strictness),
        "learner": bundle.learner,
        "learner_params": classifier.params,
        "backbone": backbone.name,
        "backbone_id": backbone.id,
        "embedding_dim": backbone.embedding_dim,
        # The graph runs the model's last stage as adapted to the examples (MAML).
        "adapts_last_stage": bool(classifier.needs_last_stage),
        "outputs": {
            "probabilities": "(batch, n_classes) float32, calibrated; columns in 'classes' order",
            "distance": "(batch,) float32, cosine distance to the nearest class (open set)",
            "unknown": "(batch,) bool, distance > threshold: none of these classes",
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fsl_app_version": __version__,
    }
    return {key: json.dumps(value, default=os.fspath) for key, value in values.items()}


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxExportError(
            f"ONNX export needs the Python package {module}, which is not installed: {_INSTALL}"
        ) from None

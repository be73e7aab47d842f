"""A fitted classifier in one portable file: all it takes to classify new images elsewhere.

A bundle is a safetensors file, never a pickle, so opening one cannot run code.
Its tensors hold the numbers: the support rows (embeddings; for a learner that adapts the image
model's last stage, each embedding followed by the activations entering that stage) with their
label indices,
on which the learner is refitted (learners fit deterministically, so the
prototypes or the adapted head come back), and the calibration as it was
fitted (temperature, "none of these" prototypes, threshold and the pictures a
person said are none of these), never recalibrated on load. Its metadata holds
the names: format and version, backbone name and id, learner and parameters,
classes in column order, strictness, notes, where each row's embedding ends, creation time and
app version.

Embeddings mean something only for the backbone that made them, so a bundle
names the backbone's id and :func:`check_backbone` refuses any other.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from fsl_app import __version__
from fsl_app.backbones import Backbone, import_timm
from fsl_app.classifier import CalibratedClassifier
from fsl_app.files import write_atomically
from fsl_app.learners import LEARNERS, NotFittedError, learner_entry, needs_last_stage
from fsl_app.trust.open_set import OpenSetDetector

FORMAT_NAME = "fsl_app.bundle"
# Format 2: the rows may carry the activations entering the last stage after the embedding
# (``embedding_dim`` in the metadata says where the embedding ends). A model whose rows are
# embeddings only is still written as format 1, so older versions of fsl_app open it; they refuse
# a format 2 file as "saved by a newer version" instead of misreading it.
FORMAT_VERSION = 2
PLAIN_FORMAT_VERSION = 1
# A refit on another machine may differ in the last bits (BLAS, torch version). A learner that
# depends on a file outside the bundle (MAML's meta-learned initialisation) and finds another
# one differs by far more, and is refused rather than allowed to answer differently.
LOGIT_TOLERANCE = 1e-4


class BundleError(ValueError):
    """A file cannot be used as a model; the message is one sentence a person can act on."""


@dataclass(frozen=True)
class Bundle:
    """A model read by :func:`load_bundle`.

    ``classifier`` is fitted, ready to ``predict`` rows of shape (n, width) made by the
    backbone ``backbone_id``: embeddings, or, when ``classifier.needs_last_stage``, embeddings
    followed by the activations entering the last stage
    (:func:`fsl_app.embedded_set.with_last_stage`); ``classes`` is its column
    order. ``created`` is an ISO 8601 UTC time, ``version`` the format version
    and ``app_version`` the fsl_app version that saved it.
    """

    classifier: CalibratedClassifier
    backbone_name: str
    backbone_id: str
    classes: list[str]
    learner: str
    created: str
    version: int
    app_version: str


def bundle_bytes(classifier: CalibratedClassifier, *, backbone: Backbone) -> bytes:
    """The bundle of ``classifier`` as bytes, e.g. for a download button.

    The classifier keeps the examples it was fitted on; their embeddings must be by
    ``backbone`` (another embedding size raises ``ValueError``). Rows that carry the
    activations entering the last stage are saved whole (float32, as fitted), so the model
    refitted on load answers exactly as this one.
    """
    if not hasattr(classifier, "learner_"):
        raise NotFittedError("Fit the classifier before saving it: there is nothing to save yet.")
    classes = classifier.classes_.tolist()
    if not all(isinstance(name, str) for name in classes):
        raise ValueError("Only a classifier fitted on class names (strings) can be saved.")
    targets = np.searchsorted(classifier.classes_, classifier.labels_).astype(np.int64)
    support = np.ascontiguousarray(classifier.support_, dtype=np.float32)
    if classifier.embedding_dim_ != backbone.embedding_dim:
        raise ValueError(
            f"The classifier was fitted on {classifier.embedding_dim_}-d embeddings but "
            f"{backbone.name} "
            f"makes {backbone.embedding_dim}-d embeddings."
        )
    open_set = classifier.open_set_
    try:
        params = json.dumps(_every_setting(classifier), default=os.fspath)
    except TypeError as err:
        raise ValueError(f"The learner's parameters must be plain values: {err}") from None
    tensors = {
        "support": support,
        "labels": targets,
        "support_logits": classifier.learner_.decision_function(support),
        "temperature": np.asarray(classifier.temperature_, dtype=np.float64),
        "open_set.prototypes": np.ascontiguousarray(open_set.prototypes_, dtype=np.float64),
        "open_set.threshold": np.asarray(open_set.threshold_, dtype=np.float64),
        # The pictures marked "none of these", as the detector keeps them (power-normalised).
        "open_set.negatives": np.ascontiguousarray(open_set.negatives_, dtype=np.float64),
        # The pictures still to sort that a semi-supervised learner was fitted with.
        "unlabeled": np.ascontiguousarray(classifier.unlabeled_, dtype=np.float32),
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(
            FORMAT_VERSION if classifier.needs_last_stage else PLAIN_FORMAT_VERSION
        ),
        "backbone": backbone.name,
        "backbone_id": backbone.id,
        "learner": classifier.learner,
        "learner_params": params,
        "classes": json.dumps(classes),
        "strictness": repr(float(classifier.strictness)),
        "open_set_reason": json.dumps(open_set.reason_),
        "notes": json.dumps(classifier.notes),
        "example_ids": json.dumps(classifier.ids_),
        "embedding_dim": str(classifier.embedding_dim_),
        # Where a learner that adapts the last stage ran (mixed precision on a GPU), to name
        # it when a refit elsewhere answers otherwise.
        "fitted_on": _fitting_device() if classifier.needs_last_stage else "",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fsl_app_version": __version__,
    }
    return safetensors.numpy.save(tensors, metadata=metadata)


def save_bundle(
    path: str | os.PathLike, classifier: CalibratedClassifier, *, backbone: Backbone
) -> Path:
    """Write :func:`bundle_bytes` to ``path`` atomically: no reader ever sees half a file."""
    data = bundle_bytes(classifier, backbone=backbone)
    return write_atomically(path, data)


def load_bundle(path_or_bytes: str | os.PathLike | bytes, *, name: str | None = None) -> Bundle:
    """Read a model saved by :func:`save_bundle`, from a path or from the file's bytes.

    ``name`` names the file in messages (e.g. an upload's name). A missing
    file, one that is not a model of this app, a damaged one or one saved by
    another format version raises :class:`BundleError`. The learner is
    refitted here (see :meth:`CalibratedClassifier.from_fitted_state`).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        name = name or path.name
        try:
            data = path.read_bytes()
        except OSError:
            raise BundleError(f"There is no readable model file at '{path}'.") from None
    label = f"'{name}'" if name else "This file"
    metadata = _header_metadata(data)
    if metadata is None or metadata.get("format") != FORMAT_NAME:
        raise BundleError(
            f"{label} is not a model file saved by fsl_app: pick a file exported from the app."
        )
    version = metadata.get("format_version", "")
    if not version.isdigit():
        raise BundleError(f"{label} is damaged: export the model again.")
    if int(version) > FORMAT_VERSION:
        raise BundleError(
            f"{label} was saved by a newer version of fsl_app (model format {version}); "
            "update the app to open it."
        )
    if int(version) < PLAIN_FORMAT_VERSION:
        raise BundleError(
            f"{label} uses model format {version}, which this version of fsl_app cannot read."
        )
    try:
        tensors = safetensors.numpy.load(data)
    except SafetensorError:
        raise BundleError(f"{label} is damaged or cut short: export the model again.") from None
    backbone = metadata.get("backbone", "")
    if not import_timm().is_model(backbone):
        raise BundleError(
            f"{label} was made with the backbone '{backbone}', which this version of fsl_app "
            "does not know."
        )
    learner = metadata.get("learner", "")
    if learner not in LEARNERS:
        raise BundleError(
            f"{label} uses the learner '{learner}', which this version of fsl_app does not have."
        )
    try:
        classifier, classes = _rebuild(learner, tensors, metadata)
    except _LastStageMissing as err:
        raise BundleError(f"{label} {err}") from None
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise BundleError(f"{label} is damaged ({err}): export the model again.") from None
    logits = classifier.learner_.decision_function(tensors["support"])
    if not np.allclose(
        logits, tensors["support_logits"], rtol=LOGIT_TOLERANCE, atol=LOGIT_TOLERANCE
    ):
        made_on, here = metadata.get("fitted_on", ""), _fitting_device()
        if classifier.needs_last_stage and made_on and made_on != here:
            names = {"cuda": "a GPU", "mps": "an Apple GPU", "cpu": "a CPU"}
            raise BundleError(
                f"{label} was made on {names.get(made_on, made_on)}, where its learner "
                f"'{learner}' adapts the image model with other arithmetic than here on "
                f"{names.get(here, here)}, so it would answer differently: export it again on "
                "this computer, or use it on one like the computer that made it."
            )
        raise BundleError(
            f"{label} answers differently here than where it was made (its learner "
            f"'{learner}' depends on files that differ on this computer, or works differently "
            "in this version of fsl_app): export it again here."
        )
    return Bundle(
        classifier=classifier,
        backbone_name=backbone,
        backbone_id=metadata.get("backbone_id", ""),
        classes=classes,
        learner=learner,
        created=metadata.get("created", ""),
        version=int(version),
        app_version=metadata.get("fsl_app_version", ""),
    )


def check_backbone(bundle: Bundle, backbone: Backbone) -> None:
    """Refuse ``backbone`` unless it makes the embeddings the bundle's examples were made with."""
    if backbone.id == bundle.backbone_id:
        return
    if backbone.name != bundle.backbone_name:
        raise BundleError(
            f"This model was made with the backbone '{bundle.backbone_name}', not "
            f"'{backbone.name}': switch to '{bundle.backbone_name}' to use it."
        )
    raise BundleError(
        f"This model was made with other weights or preprocessing for '{backbone.name}' than "
        "the ones installed here, so new images would not match its examples: export it again "
        "on this computer."
    )


def _header_metadata(data: bytes) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors header, or None when ``data`` starts with none.

    Read before the tensors, so a file of another kind or version is named as such
    instead of being called damaged.
    """
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else None


def _fitting_device() -> str:
    """The kind of device a learner that adapts the last stage fits on here (its "auto")."""
    from fsl_app.embeddings import resolve_device

    return resolve_device("auto").type


class _LastStageMissing(ValueError):
    """The model adapts the image model's last stage, which cannot be done here."""


def _rebuild(
    learner: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> tuple[CalibratedClassifier, list[str]]:
    """The fitted classifier and its classes; KeyError, ValueError and the like when damaged."""
    classes = json.loads(metadata["classes"])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError("its class names are not a list of names")
    support, targets = tensors["support"], tensors["labels"]
    # Files from before rows could carry last-stage activations hold embeddings only.
    embedding_dim = int(metadata.get("embedding_dim", support.shape[1]))
    if not 0 < embedding_dim <= support.shape[1]:
        raise ValueError(f"its embedding size is {embedding_dim}")
    if targets.dtype.kind not in "iu" or not ((targets >= 0) & (targets < len(classes))).all():
        raise ValueError("its labels are not class indices")
    strictness = float(metadata["strictness"])
    threshold = float(tensors["open_set.threshold"])
    temperature = float(tensors["temperature"])
    if not (math.isfinite(strictness) and strictness >= 0):
        raise ValueError(f"its strictness is {strictness}")
    # "None of these" switched off (strictness 0) is the one infinite threshold there can be.
    if math.isnan(threshold) or threshold < 0 or math.isinf(threshold) != (strictness == 0):
        raise ValueError(f"its 'none of these' threshold is {threshold}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"its temperature is {temperature}")
    finite = (
        support,
        tensors["open_set.prototypes"],
        tensors.get("open_set.negatives", support),
        tensors.get("unlabeled", support),
    )
    if not all(np.isfinite(array).all() for array in finite):
        raise ValueError("it holds numbers that are not finite")
    open_set = OpenSetDetector.from_fitted_state(
        classes=np.asarray(classes),
        prototypes=tensors["open_set.prototypes"],
        threshold=threshold,
        strictness=strictness,
        reason=json.loads(metadata["open_set_reason"]),
        # A model file from before "none of these" pictures were kept has none.
        negatives=tensors.get("open_set.negatives"),
    )
    params = _learner_params(learner, metadata)
    if embedding_dim < support.shape[1] and not needs_last_stage(
        learner, metadata["backbone"], params
    ):
        raise _LastStageMissing(
            f"adapts the image model's last stage from a start meta-learned for it "
            f"(pretrained/maml-stage-{metadata['backbone']}.safetensors), which this "
            "installation of fsl_app does not have: open it where fsl_app ships that file, or "
            "export the model again here."
        )
    classifier = CalibratedClassifier.from_fitted_state(
        learner,
        support,
        np.asarray(classes)[targets],
        params=params,
        strictness=strictness,
        temperature=temperature,
        open_set=open_set,
        notes=json.loads(metadata["notes"]),
        ids=json.loads(metadata.get("example_ids", "null")),
        # A model file from before learners used the pictures still to sort has none.
        unlabeled=tensors.get("unlabeled"),
        embedding_dim=embedding_dim,
    )
    if classifier.classes_.tolist() != classes:
        raise ValueError("its classes do not match its examples")
    if open_set.prototypes_.shape != (len(classes), embedding_dim):
        raise ValueError("its calibration does not match its examples")
    if tensors["support_logits"].shape != (len(support), len(classes)):
        raise ValueError("its learner check does not match its examples")
    return classifier, classes


def _every_setting(classifier: CalibratedClassifier) -> dict[str, object]:
    """The fitted learner's settings, every one a saved model may set (plain values), with
    those the classifier was built with over them: a file then refits as it was made even
    after a later version changes a learner's defaults, which it would otherwise refuse as
    answering differently."""
    learner = classifier.learner_
    own = {
        name: getattr(learner, name)
        for name in sorted(learner_entry(classifier.learner).parameters)
        if hasattr(learner, name)
    }
    return {**{name: value for name, value in own.items() if _plain(value)}, **classifier.params}


def _plain(value: object) -> bool:
    """A setting a model file may carry: a name, a switch or a number, nothing to open."""
    return value is None or isinstance(value, (str, bool, int, float))


def _learner_params(learner: str, metadata: dict[str, str]) -> dict[str, object]:
    """The learner's parameters as saved: plain values the learner accepts, nothing else.

    A saved model carries numbers and names, never a path for this computer to open (a
    checkpoint comes from the factory, by backbone), so unknown parameters are refused.
    """
    params = json.loads(metadata["learner_params"])
    if not isinstance(params, dict):
        raise ValueError("its learner parameters are not a list of settings")
    unknown = sorted(set(params) - learner_entry(learner).parameters)
    if unknown:
        raise ValueError(f"it sets learner parameters this app does not take: {', '.join(unknown)}")
    for name, value in params.items():
        if not _plain(value) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"its learner parameter '{name}' is {value!r}")
    if params.get("backbone", metadata["backbone"]) != metadata["backbone"]:
        raise ValueError("its learner names another backbone than the model")
    return params

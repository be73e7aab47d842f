"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400).

A small head on the backbone's embeddings starts from a meta-learned
initialisation and is adapted to the user's classes by a few gradient steps on
their examples. The head is a residual adapter ``z = normalize(h + W2 relu(W1 h
+ b1))`` over SimpleShot-normalised embeddings ``h`` (centred on the support
mean, unit length), followed by a linear classifier initialised from the
support prototypes ``c_k`` of the adapted features: ``W_k = 2 c_k``, ``b_k =
-|c_k|^2``, logits divided by a temperature (Proto-MAML, Triantafillou et al.,
ICLR 2020, arXiv:1903.03096). So any number of classes works, and before any
step the head is a nearest-prototype classifier. The inner step sizes may be
learned per parameter (Meta-SGD, Li et al. 2017, arXiv:1707.09835).

The inner loop adapts ``b1``, ``W2`` and the classifier; ``W1`` is learned by
meta-training only. Adapting only the top of a network loses nothing (Raghu
et al., ICLR 2020, arXiv:1909.09157), and it lets ``fit`` project the support
through ``W1`` once instead of at every step, which halves its time.

The initialisation (W1, b1, W2, the temperature and the step sizes) can be
meta-trained per backbone by :mod:`fsl_app.training.maml` and shipped as
``pretrained/maml-<backbone>.safetensors`` (read by :mod:`fsl_app.pretrained`,
never here); none is shipped for the default backbone, because every one measured
was worse than the prototype start (``pretrained/maml-tf_efficientnet_lite0.md``).
``W2`` starts at zero, so an adapter that was never meta-trained is the identity.
The functions below are shared by ``fit`` and meta-training: the same inner loop runs with
``create_graph=True`` for second-order meta-gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from fsl_app.learners.base import FewShotLearner, usable_checkpoint
from fsl_app.learners.protonet import class_means, simpleshot_normalize
from fsl_app.plural import counted

if TYPE_CHECKING:
    from fsl_app.pretrained import Checkpoint
    from fsl_app.stage_cache import LastStage

Parameters = dict[str, torch.Tensor]

ADAPTER_KEYS = ("w1", "b1", "w2")
FAST_KEYS = ("b1", "w2", "weight", "bias")  # what the inner loop adapts
STEP_SIZE_PREFIX = "step_size."
# Used without a checkpoint and as meta-training's defaults.
DEFAULT_INNER_STEPS = 10
DEFAULT_INNER_LR = 0.1
DEFAULT_TEMPERATURE = 0.2
DEFAULT_HIDDEN = 256


def init_adapter(dim: int, hidden: int = DEFAULT_HIDDEN, seed: int = 0) -> Parameters:
    """A fresh adapter for ``dim``-d embeddings: W1 (hidden, dim) random, W2 (dim, hidden) zero.

    ``h`` has unit length, so W1 with entries of variance 1/hidden gives a
    hidden vector of about unit length too; larger hidden units would make
    every gradient step on W2 hidden-times larger. The zero W2 makes the
    adapter the identity.
    """
    generator = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(hidden, dim, generator=generator) / math.sqrt(hidden),
        "b1": torch.zeros(hidden),
        "w2": torch.zeros(dim, hidden),
    }


@dataclass(frozen=True)
class _Projected:
    """Embeddings as the adapter sees them: ``h`` (n, dim) and ``W1 h`` (n, hidden)."""

    h: torch.Tensor
    hidden: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor, mean: torch.Tensor, w1: torch.Tensor) -> _Projected:
        h = simpleshot_normalize(features, "cl2", mean)
        return cls(h, h @ w1.T)

    def adapted(self, head: Parameters) -> torch.Tensor:
        """The adapter's output ``z`` of shape (n, dim), unit length."""
        residual = F.relu(self.hidden + head["b1"]) @ head["w2"].T
        return F.normalize(self.h + residual, dim=1)

    def logits(self, head: Parameters, temperature: torch.Tensor | float) -> torch.Tensor:
        return (self.adapted(head) @ head["weight"].T + head["bias"]) / temperature


def prototype_classifier(z: torch.Tensor, targets: torch.Tensor, n_classes: int) -> Parameters:
    """Proto-MAML's classifier: weight (n_classes, dim) = 2 c_k, bias (n_classes,) = -|c_k|^2.

    ``c_k`` are the class means of the adapted support ``z`` (n, dim). With
    this classifier, logits are negative squared distances to the prototypes
    plus |z|^2 = 1, the same for every class. Gradients flow through the
    prototypes into the adapter, as in the paper.
    """
    prototypes = class_means(z, targets, n_classes)
    return {"weight": 2 * prototypes, "bias": -prototypes.pow(2).sum(dim=1)}


def head_logits(
    head: Parameters, features: torch.Tensor, mean: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """Logits of shape (n, n_classes) of the adapter + classifier ``head``.

    ``features`` (n, dim) are centred on ``mean`` (dim,), the support mean.
    """
    return _Projected.of(features, mean, head["w1"]).logits(head, temperature)


def adapt(
    adapter: Parameters,
    step_sizes: Parameters,
    support: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    temperature: torch.Tensor | float,
    create_graph: bool = False,
) -> tuple[Parameters, list[float]]:
    """MAML's inner loop: ``steps`` gradient steps on the support cross-entropy.

    Starts from ``adapter`` plus the prototype classifier of ``support`` (n,
    dim) with ``targets`` (n,), and steps each of :data:`FAST_KEYS` by its
    entry in ``step_sizes`` (a scalar or one size per element).
    ``create_graph=True`` keeps the steps differentiable for second-order
    meta-gradients; without it the gradients are constants (first-order
    MAML), but the result still depends on ``adapter`` and ``step_sizes``.
    Returns the adapted head (``w1`` included) and the support loss before
    each step and after the last (``steps + 1`` values).
    """
    projected = _Projected.of(support, support.mean(dim=0), adapter["w1"])
    classifier = prototype_classifier(
        projected.adapted(adapter), targets, n_classes=int(targets.max()) + 1
    )
    # Fresh graph nodes: the inner gradients are partial derivatives (the classifier is a
    # parameter of its own once initialised), and a first-order step never frees the graph
    # from the initialisation that the outer gradient needs.
    fast = {"b1": adapter["b1"].clone(), "w2": adapter["w2"].clone(), **classifier}
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(projected.logits(fast, temperature), targets)
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        fast = {
            name: value - step_sizes[name] * grad
            for (name, value), grad in zip(fast.items(), grads, strict=True)
        }
    with torch.no_grad():
        losses.append(F.cross_entropy(projected.logits(fast, temperature), targets).item())
    return {"w1": adapter["w1"], **fast}, losses


def uniform_step_sizes(lr: float) -> Parameters:
    return {name: torch.tensor(float(lr)) for name in FAST_KEYS}


def initialisation_tensors(
    adapter: Parameters, step_sizes: Parameters, log_temperature: torch.Tensor
) -> Parameters:
    """A meta-learned initialisation as a checkpoint's flat tensors (``step_size.*`` prefixed)."""
    prefixed = {STEP_SIZE_PREFIX + k: v for k, v in step_sizes.items()}
    return {**adapter, **prefixed, "log_temperature": log_temperature}


def initialisation_parts(tensors: Parameters) -> tuple[Parameters, Parameters, torch.Tensor]:
    """(adapter, step sizes, log temperature) of :func:`initialisation_tensors`' output."""
    step_sizes = {
        k[len(STEP_SIZE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STEP_SIZE_PREFIX)
    }
    return {k: tensors[k] for k in ADAPTER_KEYS}, step_sizes, tensors["log_temperature"]


class MAML(FewShotLearner):
    """MAML adapted to the support by a few gradient steps: the image model's last stage and a
    prototype-initialised classifier when the pictures come with the activations entering that
    stage, else the Proto-MAML head on the embeddings.

    **Last stage** (the default where it applies): ``stage`` is the backbone's
    :class:`fsl_app.stage_cache.LastStage` and ``stage_checkpoint`` its meta-learned start
    (both resolved by :func:`fsl_app.learners.create_learner` when ``last_stage`` is true and a
    start is shipped for the backbone). Each row then holds the picture's embedding followed by
    its activations entering the last stage, flattened (:attr:`EmbeddedSet.inputs
    <fsl_app.embedded_set.EmbeddedSet.inputs>`); :class:`LastStageMAML` adapts the stage on the
    support and scores queries through the adapted stage. Rows that carry only embeddings get
    the head below, and ``notes_`` says so.

    **Head**: ``checkpoint`` is a meta-learned initialisation of the adapter (:class:`fsl_app.
    pretrained.Checkpoint`). Without one, or with one made for another embedding size, the
    adapter starts as the identity and the classifier from the prototypes, and ``notes_`` says
    so, with ``missing_reason`` (why the factory found none) when given. ``inner_steps``,
    ``inner_lr`` and ``temperature`` left at ``None`` come from the checkpoint (its learned
    Meta-SGD step sizes and temperature), else from the module defaults; a given ``inner_lr``
    replaces every step size. ``hidden`` and ``seed`` (the size and the fixed random draw of W1)
    matter only without a checkpoint. ``inner_steps`` and ``temperature`` apply to the last
    stage too.

    After ``fit``: ``support_losses_`` the support cross-entropy before each step and after the
    last, ``temperature_``, ``inner_steps_``, ``adapts_last_stage_`` (which of the two ran),
    ``notes_`` plain-language remarks about the start; with the last stage ``stage_`` (the
    fitted :class:`LastStageMAML`), else ``head_`` (the adapted tensors, classifier ``weight``
    of shape (n_classes, dim)), ``mean_`` the support mean (dim,) and ``checkpoint_`` the
    checkpoint used (or None).
    """

    name: ClassVar[str] = "maml"
    # Each fit runs an inner loop: calibration refits it on 3 folds, not one per example.
    calibration_folds: ClassVar[int] = 3

    def __init__(
        self,
        checkpoint: Checkpoint | None = None,
        missing_reason: str | None = None,
        inner_steps: int | None = None,
        inner_lr: float | None = None,
        temperature: float | None = None,
        hidden: int = DEFAULT_HIDDEN,
        seed: int = 0,
        last_stage: bool = True,
        stage: LastStage | None = None,
        stage_checkpoint: Checkpoint | None = None,
    ):
        self.checkpoint = checkpoint
        self.missing_reason = missing_reason
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.temperature = temperature
        self.hidden = hidden
        self.seed = seed
        self.last_stage = last_stage
        self.stage = stage
        self.stage_checkpoint = stage_checkpoint

    def stage_row_width(self) -> int | None:
        """Width of the rows the last stage needs (embedding + activations), or None when this
        learner adapts only its head."""
        if not self.last_stage or self.stage is None:
            return None
        return self.stage.backbone.embedding_dim + self.stage.input_numel

    def _small_work(self, rows: torch.Tensor) -> bool:
        # Adapting the last stage on activations is large work: it keeps torch's threads.
        return rows.shape[1] != self.stage_row_width()

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        width = self.stage_row_width()
        self.adapts_last_stage_ = support.shape[1] == width
        if self.adapts_last_stage_:
            self._fit_stage(support, targets)
            return
        if width is not None:
            self.notes_.append(
                "Fine-tuned only a small model on top of the image model: the pictures came "
                "without what its last stage needs."
            )
        self._fit_head(support, targets)

    def _fit_stage(self, support: torch.Tensor, targets: torch.Tensor) -> None:
        from fsl_app.embeddings import resolve_device

        self.stage_ = LastStageMAML(
            self.stage,
            self.stage_checkpoint,
            steps=self.inner_steps,
            temperature=self.temperature,
            device=resolve_device("auto"),
        ).fit(self._activations(support), targets)
        self.support_losses_ = self.stage_.support_losses_
        self.temperature_ = self.stage_.temperature_
        self.inner_steps_ = self.stage_.steps_
        # Plain words: the app shows this note on its pages (the file is named by its card).
        start = (
            "a version of it prepared on clip art of other subjects"
            if self.stage_checkpoint is not None
            else "the image model as shipped (no prepared start was found)"
        )
        self.notes_.append(
            f"Fine-tuned the image model's last stage on your examples "
            f"({counted(self.inner_steps_, 'small step')}), starting from {start}."
        )

    def _activations(self, rows: torch.Tensor) -> torch.Tensor:
        """The activations (n, C, H, W) entering the last stage, from rows of the stage's width."""
        dim = self.stage.backbone.embedding_dim
        return rows[:, dim:].reshape(-1, *self.stage.input_shape)

    def _fit_head(self, support: torch.Tensor, targets: torch.Tensor) -> None:
        found = usable_checkpoint(
            self,
            support.shape[1],
            self.notes_,
            what="initialisation",
            untrained="MAML started from the class prototypes (expect about the accuracy of a "
            "prototype classifier tuned on your examples)",
        )
        self.checkpoint_ = found
        if found is not None:
            adapter, step_sizes, log_temperature = initialisation_parts(found.tensors)
            temperature = math.exp(log_temperature.item())
            steps = int(found.metadata["inner_steps"])
        else:
            adapter = init_adapter(support.shape[1], self.hidden, self.seed)
            step_sizes = uniform_step_sizes(DEFAULT_INNER_LR)
            temperature, steps = DEFAULT_TEMPERATURE, DEFAULT_INNER_STEPS
        if self.inner_lr is not None:
            step_sizes = uniform_step_sizes(self.inner_lr)
        self.temperature_ = float(self.temperature or temperature)
        self.inner_steps_ = int(steps if self.inner_steps is None else self.inner_steps)
        if self.inner_steps_ < 0:
            raise ValueError("inner_steps must be 0 (no adaptation) or a positive number of steps.")
        start = {k: v.detach().requires_grad_(k in FAST_KEYS) for k, v in adapter.items()}
        with torch.enable_grad():
            head, self.support_losses_ = adapt(
                start,
                step_sizes,
                support,
                targets,
                steps=self.inner_steps_,
                temperature=self.temperature_,
            )
        self.head_ = {k: v.detach() for k, v in head.items()}
        self.mean_ = support.mean(dim=0)

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        if self.adapts_last_stage_:
            return self.stage_.logits(self._activations(query))
        return head_logits(self.head_, query, self.mean_, self.temperature_)

    def logits_module(self) -> torch.nn.Module:
        if self.adapts_last_stage_:
            return StageLogits(self.stage_, self.stage.backbone.embedding_dim)
        return super().logits_module()


# --- Last-stage MAML: the inner loop adapts the backbone's last stage too ---------------------
#
# The head above sees only pooled embeddings. Here the inner loop also moves the backbone's last
# stage (for EfficientNet-Lite: the last block, the 1x1 head convolution and its batch norm;
# :class:`fsl_app.stage_cache.LastStage`), run on the activations that enter it, which are
# cached per image (:mod:`fsl_app.stage_cache`). The classifier starts from the prototypes of
# the centred, unit-length pooled features (Proto-MAML), so before any step the prediction is a
# prototype classifier's. Each stage tensor ``W`` steps by ``alpha_W * rms(W) * g / rms(g)``: a
# relative change of ``alpha_W`` per step whatever the tensor's scale, ``alpha_W`` meta-learned
# per tensor (Meta-SGD with one size per tensor; Li et al. 2017). The initial stage is the
# backbone's ImageNet stage, meta-learned further by first-order MAML
# (:mod:`fsl_app.training.maml`).

STAGE_PREFIX = "stage."
CLASSIFIER_KEYS = ("weight", "bias")
# Steps when adapting to the user's examples. The shipped start was meta-learned with 3 inner
# steps, and more steps at use help, as in the MAML paper (5 in training, 10 at test): on the
# same 5-shot episodes (100, 5-way) 3 / 6 / 10 steps scored 64.2 / 65.0 / 65.1% on held-out
# clip art and 85.4 / 85.6 / 86.0% on Tux Paint photos (protonet 63.4 / 83.6); at 1 shot
# (200 episodes) the number of steps hardly matters (45.3-45.8%, 69.8-70.3%; protonet 45.2 /
# 68.2). About 0.5 s at 1 shot and 3.5 s at 5 shots per 5-way fit on one CPU thread.
DEFAULT_STAGE_STEPS = 10
DEFAULT_STAGE_STEP = 3e-4  # relative change of each stage tensor per step (1e-2 overshot)
DEFAULT_CLASSIFIER_LR = 0.1


def prototype_classifier_of(h: torch.Tensor, targets: torch.Tensor, n_classes: int) -> Parameters:
    """:func:`prototype_classifier` on any device: weight (n_classes, dim), bias (n_classes,)."""
    one_hot = F.one_hot(targets, n_classes).to(h.dtype)
    prototypes = (one_hot.T @ h) / one_hot.sum(dim=0).unsqueeze(1)
    return {"weight": 2 * prototypes, "bias": -prototypes.pow(2).sum(dim=1)}


def stage_logits(
    pooled,
    stage: Parameters,
    classifier: Parameters,
    activations: torch.Tensor,
    mean: torch.Tensor,
    temperature: torch.Tensor | float,
) -> torch.Tensor:
    """Logits (n, n_classes) of ``activations`` (n, C, H, W) through ``stage`` and ``classifier``.

    ``pooled(activations, stage)`` runs the last stage (:meth:`LastStage.pooled`); its features
    are centred on ``mean`` (the support's, before adapting) and scaled to unit length.
    """
    h = simpleshot_normalize(pooled(activations, stage).float(), "cl2", mean)
    return (h @ classifier["weight"].T + classifier["bias"]) / temperature


def adapt_stage(
    pooled,
    stage: Parameters,
    step_sizes: Parameters,
    support: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    temperature: torch.Tensor | float,
) -> tuple[Parameters, Parameters, torch.Tensor, list[float]]:
    """Last-stage MAML's inner loop: ``steps`` steps on the support cross-entropy.

    ``stage`` holds the last stage's tensors (they should require grad), ``support`` the
    activations (n, C, H, W) entering it, ``targets`` (n,) their classes (augmented views are
    simply more rows). ``step_sizes`` has ``stage.<name>`` (relative step of each stage tensor)
    and ``weight`` / ``bias`` (SGD step sizes of the classifier). The inner gradients are
    constants (first-order): the adapted tensors still depend on ``stage`` and ``step_sizes``
    with gradient one and ``-direction``, which is what first-order MAML's outer step needs.
    Returns the adapted stage, the adapted classifier, the centring mean (dim,) and the support
    loss before each step and after the last (``steps + 1`` values).
    """
    n_classes = int(targets.max()) + 1
    with torch.no_grad():
        mean = pooled(support, stage).float().mean(dim=0)
    h = simpleshot_normalize(pooled(support, stage).float(), "cl2", mean)
    classifier = {k: v.detach().requires_grad_() for k, v in prototype_classifier_of(
        h.detach(), targets, n_classes).items()}  # fmt: skip
    fast_stage = dict(stage)
    losses = []
    for _ in range(steps):
        logits = stage_logits(pooled, fast_stage, classifier, support, mean, temperature)
        loss = F.cross_entropy(logits, targets)
        losses.append(loss.item())
        names = list(fast_stage)
        grads = torch.autograd.grad(
            loss, [fast_stage[n] for n in names] + list(classifier.values())
        )
        stage_grads, classifier_grads = grads[: len(names)], grads[len(names) :]
        fast_stage = {
            name: value - step_sizes[STAGE_PREFIX + name] * relative_direction(value, grad)
            for (name, value), grad in zip(fast_stage.items(), stage_grads, strict=True)
        }
        classifier = {
            name: value - step_sizes[name] * grad
            for (name, value), grad in zip(classifier.items(), classifier_grads, strict=True)
        }
    with torch.no_grad():
        logits = stage_logits(pooled, fast_stage, classifier, support, mean, temperature)
        losses.append(F.cross_entropy(logits, targets).item())
    return fast_stage, classifier, mean, losses


def relative_direction(value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``rms(value) * grad / rms(grad)``, a constant (no graph): one step of relative size 1."""
    grad = grad.detach()
    scale = value.detach().pow(2).mean().sqrt() / (grad.pow(2).mean().sqrt() + 1e-12)
    return grad * scale


def uniform_stage_step_sizes(
    stage: Parameters,
    step: float = DEFAULT_STAGE_STEP,
    classifier_lr: float = DEFAULT_CLASSIFIER_LR,
) -> Parameters:
    sizes = {STAGE_PREFIX + name: torch.tensor(float(step)) for name in stage}
    return {**sizes, **{k: torch.tensor(float(classifier_lr)) for k in CLASSIFIER_KEYS}}


class LastStageMAML:
    """Last-stage MAML on cached activations (Finn et al. 2017; Proto-MAML, Triantafillou et al.
    2020): the backbone's last stage and a prototype-initialised classifier adapted by
    ``steps`` first-order steps on the support.

    ``stage`` is a :class:`fsl_app.stage_cache.LastStage`; ``checkpoint`` a meta-learned
    initialisation (``pretrained/maml-stage-<backbone>.safetensors``, read by
    :func:`fsl_app.pretrained.load_stage_checkpoint`) or None for the backbone's ImageNet stage
    with default step sizes. Not a registered learner: it needs activations, not embeddings.

    ``fit(support (n, C, H, W), targets (n,) in 0..k-1)``; ``predict_proba(query)`` gives
    (n_query, k); :meth:`embed` gives pooled features of the adapted stage (n, dim), for any
    learner to use. After ``fit``: ``stage_`` (adapted tensors), ``classifier_``, ``mean_``,
    ``support_losses_``.
    """

    def __init__(
        self,
        stage,
        checkpoint: Checkpoint | None = None,
        *,
        steps: int | None = None,
        temperature: float | None = None,
        device: str | torch.device = "cpu",
    ):
        self.stage = stage
        self.checkpoint = checkpoint
        self.steps = steps
        self.temperature = temperature
        self.device = torch.device(device)

    def _start(self) -> tuple[Parameters, Parameters, float, int]:
        if self.checkpoint is None:
            start = self.stage.parameters()
            sizes = uniform_stage_step_sizes(start)
            temperature = DEFAULT_TEMPERATURE
        else:
            tensors = self.checkpoint.tensors
            start = {
                k[len(STAGE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STAGE_PREFIX)
            }
            sizes = {
                k[len(STEP_SIZE_PREFIX) :]: v
                for k, v in tensors.items()
                if k.startswith(STEP_SIZE_PREFIX)
            }
            temperature = math.exp(tensors["log_temperature"].item())
        steps = DEFAULT_STAGE_STEPS if self.steps is None else self.steps
        temperature = temperature if self.temperature is None else self.temperature
        return start, sizes, float(temperature), int(steps)

    def _pooled(self, activations: torch.Tensor, stage: Parameters) -> torch.Tensor:
        from fsl_app.embeddings import autocast_for

        with autocast_for(self.device):
            return self.stage.pooled(activations, stage)

    def fit(self, support: torch.Tensor, targets: torch.Tensor) -> LastStageMAML:
        start, sizes, self.temperature_, self.steps_ = self._start()
        if self.steps_ < 0:
            raise ValueError("steps must be 0 (no adaptation) or a positive number of steps.")
        self.stage.tail.to(self.device)
        stage = {k: v.to(self.device).requires_grad_() for k, v in start.items()}
        sizes = {k: v.to(self.device) for k, v in sizes.items()}
        with torch.enable_grad():
            fast, classifier, mean, self.support_losses_ = adapt_stage(
                self._pooled,
                stage,
                sizes,
                support.to(self.device).float(),
                targets.to(self.device),
                steps=self.steps_,
                temperature=self.temperature_,
            )
        self.stage_ = {k: v.detach() for k, v in fast.items()}
        self.classifier_ = {k: v.detach() for k, v in classifier.items()}
        self.mean_ = mean.detach()
        return self

    @torch.no_grad()
    def embed(self, activations: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Pooled features (n, dim) of ``activations`` through the adapted stage, on the CPU."""
        if not hasattr(self, "stage_"):
            raise RuntimeError("Call fit() before embed().")
        return self.stage.pooled_in_batches(
            activations, self.stage_, device=self.device, batch_size=batch_size
        )

    @torch.no_grad()
    def logits(self, query: torch.Tensor) -> torch.Tensor:
        """Class scores (n_query, n_classes) of ``query`` activations, on the CPU."""
        features = self.embed(query).to(self.device)
        h = simpleshot_normalize(features, "cl2", self.mean_)
        logits = (h @ self.classifier_["weight"].T + self.classifier_["bias"]) / self.temperature_
        return logits.cpu()

    def predict_proba(self, query: torch.Tensor) -> torch.Tensor:
        """Class probabilities (n_query, n_classes) of ``query`` activations."""
        return self.logits(query).softmax(dim=1)


def _prefixed(tensors: Parameters, prefix: str) -> Parameters:
    """The entries of ``tensors`` whose names start with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class StageLogits(torch.nn.Module):
    """A fitted :class:`LastStageMAML` as a module: rows (n, dim + C*H*W) -> logits (n, k).

    The rows are those the ``maml`` learner takes (the embedding, then the activations entering
    the last stage); the module holds a copy of the stage with the adapted weights, so it can
    be exported (ONNX) and runs without the learner.
    """

    def __init__(self, fitted: LastStageMAML, embedding_dim: int):
        import copy

        super().__init__()
        self.tail = copy.deepcopy(fitted.stage.tail).cpu().eval()
        # strict=False: the adapted tensors are the stage's parameters, not its batch-norm
        # statistics; a name that is not the stage's would be a bug, not a missing buffer.
        loaded = self.tail.load_state_dict(
            {k: v.cpu() for k, v in fitted.stage_.items()}, strict=False
        )
        if loaded.unexpected_keys:
            raise ValueError(f"Not tensors of the last stage: {loaded.unexpected_keys}")
        self.pool = copy.deepcopy(fitted.stage.model.global_pool).cpu()
        self.embedding_dim = embedding_dim
        self.input_shape = tuple(fitted.stage.input_shape)
        self.register_buffer("mean", fitted.mean_.cpu())
        self.register_buffer("weight", fitted.classifier_["weight"].cpu())
        self.register_buffer("bias", fitted.classifier_["bias"].cpu())
        self.temperature = float(fitted.temperature_)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        activations = rows[:, self.embedding_dim :].reshape(-1, *self.input_shape)
        features = self.pool(self.tail(activations)).flatten(1)
        h = F.normalize(features - self.mean, dim=1)
        return (h @ self.weight.T + self.bias) / self.temperature

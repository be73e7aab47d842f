"""Memory-augmented neural networks (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML
2016, arXiv:1605.06065).

A controller turns each embedding into a key; an external memory of key slots is written with
the labeled examples, one after the other, and read by each query. As in the paper, a write goes
to a mix of the slot the key reads most strongly and the least-used slot (least-recently-used
access), with a learned gate, and reads weigh the slots by the cosine of the keys:

    read weights  w_i = softmax_i(beta cos(k, M_i))
    write weights w   = g w^read + (1 - g) w^least-used,   M_i <- M_i + w_i k
    usage         u   <- decay u + w^read + w^write

The paper's network sees the label of the previous image with the next and learns to bind them
in memory; over embeddings, with labeled examples given at once, the memory is conditioned on
the labels instead (a key/value memory): each slot holds one class, an example's write reads
only the slots of its own class, so the gate decides between merging it into its class's
closest slot (towards a class mean) and giving it a fresh slot (towards nearest neighbours).
A query reads the memory and its logit for a class is the log of the read weight on that class's
slots (up to a constant shared by the classes): ``logsumexp_{i in class} beta cos(k, M_i)``.

The memory has as many slots as there are examples, so least-used access always finds a slot
never written. The controller is one small function applied to every coordinate of the centred,
unit-length embedding (Siamese networks' learned transform, ``x + w2 . relu(w1 x + b1)``), with
``w2`` starting at zero: an untrained MANN writes the embeddings themselves (gate 0.5 merges
half of each example into its class's closest slot) and reads with ``beta = 10``. A controller
with weights per dimension (1280 -> 256 -> 1280, residual) was tried first: meta-trained on the
clip-art base set (1600 tasks) it gained 2 points on held-out clip-art classes and lost 8 to 15
on the Tux Paint photos (5-way, 1 and 5 shots): it had learned which dimensions matter for clip
art. Meta-training
(:mod:`fsl_app.training.mann`) learns the controller, ``beta`` and the gate on base classes; the
result is shipped per backbone as ``pretrained/mann-<backbone>.safetensors``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from fsl_app.learners.base import CheckpointedLearner, check_temperature, usable_checkpoint
from fsl_app.learners.protonet import simpleshot_normalize
from fsl_app.learners.siamese import init_projection, siamese_projection

if TYPE_CHECKING:
    pass

Tensors = dict[str, torch.Tensor]

DEFAULT_HIDDEN = 32
DEFAULT_SHARPNESS = 10.0  # beta: read weights are softmax(beta cos); ProtoNet's 1 / 0.1
DEFAULT_USAGE_DECAY = 0.95


def init_mann(hidden: int = DEFAULT_HIDDEN, seed: int = 0) -> Tensors:
    """A fresh controller and memory settings (the untrained learner's), for any embedding size:
    the controller is one function shared by every coordinate.

    ``w1``, ``b1`` (hidden,) random and ``w2`` (hidden,) zero: the controller starts as the
    identity; ``log_beta`` the read sharpness; ``gate_logit`` 0 (g = 0.5); ``decay_logit`` the
    usage decay.
    """
    return {
        **init_projection(hidden, seed),
        "log_beta": torch.tensor(math.log(DEFAULT_SHARPNESS)),
        "gate_logit": torch.tensor(0.0),
        "decay_logit": torch.tensor(math.log(DEFAULT_USAGE_DECAY / (1 - DEFAULT_USAGE_DECAY))),
    }


def controller_keys(params: Tensors, features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Unit-length keys (n, dim) of embeddings ``features`` (n, dim) centred on ``mean``.

    The controller is Siamese networks' learned coordinate-wise transform
    (:func:`fsl_app.learners.siamese.siamese_projection`) of the centred embedding.
    """
    return siamese_projection(params, simpleshot_normalize(features, "cl2", mean))


def write_memory(
    params: Tensors, keys: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``keys`` (n, d) of classes ``targets`` in order into a memory of n slots.

    Returns the slots' keys (n, d) and each slot's class (n,), -1 for a slot never written.
    """
    n = len(keys)
    memory = torch.zeros_like(keys)
    slot_class = torch.full((n,), -1, dtype=torch.long)
    usage = torch.zeros(n)
    beta, gate = params["log_beta"].exp(), params["gate_logit"].sigmoid()
    decay = params["decay_logit"].sigmoid()
    for key, target in zip(keys, targets, strict=True):
        least_used = F.one_hot(usage.argmin(), n).to(keys.dtype)  # an unwritten slot: usage 0
        own = slot_class == target
        if own.any():
            scores = (beta * F.normalize(memory, dim=1) @ key).masked_fill(~own, -torch.inf)
            read = scores.softmax(dim=0)
            write = gate * read + (1 - gate) * least_used
        else:
            read, write = torch.zeros(n), least_used
        memory = memory + write[:, None] * key
        # the least-used slot becomes this class's when the gate gives it any of the write
        slot_class = torch.where(least_used.bool() & (write > 0), target, slot_class)
        usage = decay * usage + read + write
    return memory, slot_class


def read_logits(
    params: Tensors,
    memory: torch.Tensor,
    slot_class: torch.Tensor,
    keys: torch.Tensor,
    n_classes: int,
    temperature: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Logits (n_query, n_classes) of query ``keys``: per class, logsumexp of its slots' scores."""
    scores = params["log_beta"].exp() * keys @ F.normalize(memory, dim=1).T  # (n_query, n_slots)
    owner = slot_class[None, :] == torch.arange(n_classes)[:, None]  # (n_classes, n_slots)
    masked = scores[:, None, :].masked_fill(~owner[None], -torch.inf)
    return torch.logsumexp(masked, dim=2) / temperature


def mann_logits(
    params: Tensors,
    support: torch.Tensor,
    targets: torch.Tensor,
    query: torch.Tensor,
    temperature: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Logits (n_query, n_classes) of one task, as meta-training and ``fit`` compute them."""
    mean = support.mean(dim=0)
    memory, slot_class = write_memory(params, controller_keys(params, support, mean), targets)
    keys = controller_keys(params, query, mean)
    return read_logits(params, memory, slot_class, keys, int(targets.max()) + 1, temperature)


class MemoryNet(CheckpointedLearner):
    """A memory written with the examples and read by each query, with a meta-trained controller.

    ``checkpoint`` is the meta-trained controller (:class:`fsl_app.pretrained.Checkpoint`,
    which :func:`fsl_app.learners.create_learner` finds for the backbone). Without one, or
    with one made for another embedding size, the untrained controller passes embeddings
    through, and ``notes_`` says so. ``temperature`` divides the logits (default 1: the read
    sharpness ``beta`` already scales them).

    After ``fit``: ``params_``, ``mean_`` (dim,) the support mean, ``memory_`` (n_slots, dim)
    the slots' keys, ``slot_class_`` (n_slots,) each slot's class (-1: never written),
    ``checkpoint_`` (or None) and ``notes_``. Logits are of shape (n_query, n_classes).
    """

    name: ClassVar[str] = "mann"

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        check_temperature(self.temperature)
        found = usable_checkpoint(
            self,
            support.shape[1],
            self.notes_,
            what="memory controller",
            untrained="The memory network wrote the embeddings themselves as keys",
        )
        self.checkpoint_ = found
        self.params_ = dict(found.tensors) if found else init_mann()
        self.mean_ = support.mean(dim=0)
        keys = controller_keys(self.params_, support, self.mean_)
        self.memory_, self.slot_class_ = write_memory(self.params_, keys, targets)
        self.n_classes_ = int(targets.max()) + 1

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        keys = controller_keys(self.params_, query, self.mean_)
        return read_logits(
            self.params_,
            self.memory_,
            self.slot_class_,
            keys,
            self.n_classes_,
            self.temperature or 1.0,
        )

"""Optimization as a model for few-shot learning (Ravi & Larochelle, ICLR 2017, openreview
rJY0-Kcll): an LSTM meta-learner that trains the classifier.

The classifier is a linear head on centred, unit-length embeddings, ``logits = (x W^T + b) /
scale``, started from the class prototypes (``W`` = the unit-length class means, ``b = 0``:
cosine-to-prototype scoring). A few training steps on the examples follow, each taken by the
meta-learner instead of plain gradient descent. As in the paper, the meta-learner is shared by
every coordinate of the head's parameters (each coordinate is one item of its batch, so it
serves any number of classes and any embedding size) and has two layers:

1. an LSTM over the coordinate's preprocessed gradient and the preprocessed loss (the paper's
   preprocessing, ``p = 10``: ``(log|v| / p, sign v)`` for ``|v| >= e^-p``, else ``(-1, e^p
   v)``), whose hidden state feeds
2. the paper's cell whose state is the parameter itself:

       theta_t = f_t * theta_{t-1} - i_t * grad_t,
       i_t = sigmoid(w_I . [h_t, theta_{t-1}, i_{t-1}] + b_I),
       f_t = sigmoid(w_F . [h_t, theta_{t-1}, f_{t-1}] + b_F):

   a learned, per-coordinate step size ``i`` and shrinkage ``f``.

As in the paper, gradients enter as inputs (their dependence on the meta-learner is dropped
in meta-training). The paper also meta-learns the head's starting point; here it starts from
the prototypes, so one meta-learner serves any number of classes. ``w_I`` and ``w_F`` start at
zero, so an untrained meta-learner is gradient descent with step ``sigmoid(b_I)`` (0.1) and
shrinkage ``sigmoid(b_F)`` (0.99). Meta-training is :mod:`fsl_app.training.meta_lstm`; the result
is shipped per backbone as ``pretrained/meta-lstm-<backbone>.safetensors``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from fsl_app.learners.base import FewShotLearner, usable_checkpoint
from fsl_app.learners.protonet import class_means, simpleshot_normalize

if TYPE_CHECKING:
    from fsl_app.pretrained import Checkpoint

Tensors = dict[str, torch.Tensor]

DEFAULT_HIDDEN = 20  # the paper's LSTM size
DEFAULT_STEPS = 5
DEFAULT_STEP_SIZE = 0.1
DEFAULT_SHRINK = 0.99
LOGIT_SCALE = 0.1  # the head's logits are (x W^T + b) / 0.1: ProtoNet's cosine temperature
_PREPROCESS_P = 10.0


def init_meta_lstm(hidden: int = DEFAULT_HIDDEN, seed: int = 0) -> Tensors:
    """A fresh meta-learner, as the untrained learner steps: gradient descent.

    ``lstm_w_ih`` (4 hidden, 4), ``lstm_w_hh`` (4 hidden, hidden), ``lstm_b`` (4 hidden,) are
    the first layer (torch's LSTM cell layout: input, forget, cell, output gates);
    ``w_i``, ``w_f`` (hidden + 2,) are zero, ``b_i``, ``b_f`` give step 0.1 and shrinkage 0.99.
    """
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(hidden)

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

    return {
        "lstm_w_ih": uniform(4 * hidden, 4),
        "lstm_w_hh": uniform(4 * hidden, hidden),
        "lstm_b": uniform(4 * hidden),
        "w_i": torch.zeros(hidden + 2),
        "b_i": torch.tensor(math.log(DEFAULT_STEP_SIZE / (1 - DEFAULT_STEP_SIZE))),
        "w_f": torch.zeros(hidden + 2),
        "b_f": torch.tensor(math.log(DEFAULT_SHRINK / (1 - DEFAULT_SHRINK))),
    }


def preprocess(values: torch.Tensor) -> torch.Tensor:
    """The paper's preprocessing of gradients and losses: (n,) -> (n, 2), both of order one."""
    magnitude = values.abs()
    large = magnitude >= math.exp(-_PREPROCESS_P)
    first = torch.where(large, magnitude.clamp_min(1e-30).log() / _PREPROCESS_P, -1.0)
    second = torch.where(large, values.sign(), values * math.exp(_PREPROCESS_P))
    return torch.stack([first, second], dim=1)


def head_logits(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return (features @ weight.T + bias) / LOGIT_SCALE


def train_head(
    params: Tensors,
    features: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head (weight (n_classes, d), bias (n_classes,)) after ``steps`` meta-learned steps on
    the centred, unit-length support ``features`` (n, d).

    Differentiable in ``params`` (meta-training back-propagates through the steps); the head's
    gradients themselves are inputs, computed without a graph, as in the paper.
    """
    n_classes = int(targets.max()) + 1
    weight = F.normalize(class_means(features, targets, n_classes), dim=1)
    theta = torch.cat([weight.flatten(), torch.zeros(n_classes)])
    n, hidden = len(theta), params["lstm_w_hh"].shape[1]
    h, c = torch.zeros(n, hidden), torch.zeros(n, hidden)
    i_gate, f_gate = torch.zeros(n), torch.ones(n)
    for _ in range(steps):
        leaf = theta.detach().requires_grad_()
        with torch.enable_grad():
            w, b = leaf[: weight.numel()].view_as(weight), leaf[weight.numel() :]
            loss = F.cross_entropy(head_logits(w, b, features), targets)
            (grad,) = torch.autograd.grad(loss, leaf)
        inputs = torch.cat(
            [preprocess(grad), preprocess(loss.detach().reshape(1)).expand(n, 2)], dim=1
        )
        gates = inputs @ params["lstm_w_ih"].T + h @ params["lstm_w_hh"].T + params["lstm_b"]
        gate_in, gate_forget, gate_cell, gate_out = gates.chunk(4, dim=1)
        c = gate_forget.sigmoid() * c + gate_in.sigmoid() * gate_cell.tanh()
        h = gate_out.sigmoid() * c.tanh()
        i_gate = (
            torch.cat([h, theta[:, None], i_gate[:, None]], dim=1) @ params["w_i"] + params["b_i"]
        ).sigmoid()
        f_gate = (
            torch.cat([h, theta[:, None], f_gate[:, None]], dim=1) @ params["w_f"] + params["b_f"]
        ).sigmoid()
        theta = f_gate * theta - i_gate * grad
    return theta[: weight.numel()].view_as(weight), theta[weight.numel() :]


class MetaLSTM(FewShotLearner):
    """A linear head trained on the examples by a meta-learned LSTM optimiser.

    ``checkpoint`` is the meta-learner (:class:`fsl_app.pretrained.Checkpoint`, which
    :func:`fsl_app.learners.create_learner` finds for the backbone). Without one, or with one
    meta-trained on embeddings of another size (whose gradients are of another scale), the head
    is trained by plain gradient descent (step 0.1, shrinkage 0.99), and ``notes_`` says so.
    ``steps`` left at ``None`` comes from the checkpoint (the number it was meta-trained for),
    else :data:`DEFAULT_STEPS`.

    After ``fit``: ``weight_`` (n_classes, dim), ``bias_`` (n_classes,), ``mean_`` (dim,) the
    support mean, ``checkpoint_`` (or None) and ``notes_``. Logits are of shape
    (n_query, n_classes).
    """

    name: ClassVar[str] = "meta-lstm"

    def __init__(
        self,
        checkpoint: Checkpoint | None = None,
        missing_reason: str | None = None,
        steps: int | None = None,
    ):
        self.checkpoint = checkpoint
        self.missing_reason = missing_reason
        self.steps = steps

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        if self.steps is not None and int(self.steps) < 0:
            raise ValueError("steps must be 0 (the prototypes alone) or a positive number.")
        found = usable_checkpoint(
            self,
            support.shape[1],
            self.notes_,
            what="optimiser",
            untrained="The head was trained by plain gradient descent",
        )
        self.checkpoint_ = found
        params = dict(found.tensors) if found else init_meta_lstm()
        trained_for = int(found.metadata.get("steps", DEFAULT_STEPS)) if found else DEFAULT_STEPS
        self.mean_ = support.mean(dim=0)
        features = simpleshot_normalize(support, "cl2", self.mean_)
        steps = trained_for if self.steps is None else int(self.steps)
        self.weight_, self.bias_ = train_head(params, features, targets, steps)

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        features = simpleshot_normalize(query, "cl2", self.mean_)
        return head_logits(self.weight_, self.bias_, features)

"""Few-shot learning with graph neural networks (Garcia & Bruna, ICLR 2018, arXiv:1711.04043).

The examples and the pictures still to sort are the nodes of one graph. Each node carries its
embedding (projected to ``width`` dimensions) and a label distribution: one-hot for an example,
uniform for an unlabeled picture. A few message-passing layers follow the paper: each learns the
edges of the graph from its node states, ``A_ij = softmax_j(-gamma |h_i - h_j|^2 + MLP(|h_i -
h_j|))``, and updates every node from its neighbours, ``h_i <- h_i + MLP([h_i, sum_j A_ij h_j])``;
an unlabeled node's label distribution becomes its neighbours' ``sum_j A_ij y_j`` (the examples
keep theirs). A query's class is read off its node: its own state is updated by the same layers
from the graph's nodes, and its logits are

    (cos(x_q, c_k) + alpha cos(h_q, c'_k) + beta log(sum_j A_qj y_jk)) / temperature,

where ``c_k`` is class k's mean (centred, unit-length) embedding, ``c'_k`` its examples' mean final
node state, and ``A_qj`` the query's learned edges to the graph.

Two changes from the paper, both so one trained network serves any number of classes and any
batch of queries:

- The paper concatenates a fixed-width one-hot label to each node's features and reads the
  class off a fixed-width output. Here labels travel as distributions mixed by the learned
  edges, so the network is the same for 2 or 20 classes and for any order of them.
- The paper puts the queries of a task into the graph, so each answer depends on the others.
  Here the graph is the examples and the pictures still to sort (``unlabeled`` in ``fit``, as
  the app passes its pool), and each query reads from the graph without writing to it, so a
  picture gets the same answer alone or in a batch. The evaluation passes the episode's
  queries as the pool, as the paper's transductive setting does.

``alpha``, ``beta`` and the MLPs' output weights start at zero, so an untrained network is
cosine-to-prototype scoring on centred embeddings (``ProtoNet(normalize="cl2")``); meta-training
(:mod:`fsl_app.training.gnn`) learns them on base classes. The network is shipped per backbone as
``pretrained/gnn-<backbone>.safetensors``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from fsl_app.learners.base import CheckpointedLearner, check_temperature, usable_checkpoint
from fsl_app.learners.protonet import class_means, simpleshot_normalize

if TYPE_CHECKING:
    pass

Tensors = dict[str, torch.Tensor]

DEFAULT_WIDTH = 128  # node state size
DEFAULT_HIDDEN = 64  # hidden units of the edge and node MLPs
DEFAULT_LAYERS = 2
DEFAULT_TEMPERATURE = 0.1  # ProtoNet's cosine temperature, used without a checkpoint
# Graph size is quadratic: at most this many pictures still to sort join it (evenly spread
# over the pool), so a pool of thousands costs what one of a few hundred does.
MAX_UNLABELED_NODES = 200
QUERY_CHUNK = 256  # queries scored at once: bounds the (queries, nodes, width) edge tensors
_EDGE_GAMMA = 5.0  # -gamma |h_i - h_j|^2 on unit-length states: a softmax over 10 x cosine


def init_gnn(
    dim: int,
    width: int = DEFAULT_WIDTH,
    hidden: int = DEFAULT_HIDDEN,
    layers: int = DEFAULT_LAYERS,
    seed: int = 0,
) -> Tensors:
    """A fresh network for ``dim``-d embeddings, as the untrained learner scores.

    ``w_in`` (width, dim) is a random projection that keeps unit-length embeddings about unit
    length; each layer ``l`` has an edge MLP ``edge{l}_w1`` (hidden, width), ``edge{l}_b1``,
    ``edge{l}_w2`` (hidden,) and a node MLP ``node{l}_w1`` (hidden, 2 width), ``node{l}_b1``,
    ``node{l}_w2`` (width, hidden); the readout's edges are layer ``layers``'s edge MLP.
    Output weights, ``alpha`` and ``beta`` are zero.
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) / math.sqrt(fan_in)

    params = {"w_in": randn(width, dim, fan_in=width)}
    for layer in range(layers + 1):  # the last edge MLP is the readout's
        params[f"edge{layer}_w1"] = randn(hidden, width, fan_in=width) * math.sqrt(width)
        params[f"edge{layer}_b1"] = torch.zeros(hidden)
        params[f"edge{layer}_w2"] = torch.zeros(hidden)
        params[f"edge{layer}_log_gamma"] = torch.tensor(math.log(_EDGE_GAMMA))
        if layer < layers:
            params[f"node{layer}_w1"] = randn(hidden, 2 * width, fan_in=2 * width)
            params[f"node{layer}_b1"] = torch.zeros(hidden)
            params[f"node{layer}_w2"] = torch.zeros(width, hidden)
    params["alpha"] = torch.tensor(0.0)
    params["beta"] = torch.tensor(0.0)
    return params


def n_layers(params: Tensors) -> int:
    return sum(1 for k in params if k.startswith("node") and k.endswith("_w1"))


def edge_scores(params: Tensors, layer: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Learned edge scores (n_a, n_b) between node states ``a`` (n_a, w) and ``b`` (n_b, w).

    ``-gamma |a_i - b_j|^2 + w2 . relu(W1 |a_i - b_j| + b1)``: the paper's MLP on the absolute
    difference, added to a Gaussian kernel so an untrained layer already links similar nodes.
    The (n_a, n_b, w) difference tensor is the costly part.
    """
    p = f"edge{layer}_"
    difference = (a[:, None, :] - b[None, :, :]).abs()
    learned = F.relu(difference @ params[p + "w1"].T + params[p + "b1"]) @ params[p + "w2"]
    return -params[p + "log_gamma"].exp() * difference.pow(2).sum(dim=2) + learned


def node_update(
    params: Tensors, layer: int, h: torch.Tensor, message: torch.Tensor
) -> torch.Tensor:
    p = f"node{layer}_"
    hidden = F.relu(torch.cat([h, message], dim=1) @ params[p + "w1"].T + params[p + "b1"])
    return h + hidden @ params[p + "w2"].T


def graph_states(
    params: Tensors, nodes: torch.Tensor, labels: torch.Tensor, n_labeled: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the message passing over the graph.

    ``nodes`` (n, w) are the projected node states, the first ``n_labeled`` the examples;
    ``labels`` (n, n_classes) their label distributions (uniform rows for unlabeled nodes).
    Returns the node states before each layer and after the last (layers + 1 tensors of
    shape (n, w)) and the final label distributions (n, n_classes).
    """
    states, h, y = [nodes], nodes, labels
    no_self = torch.eye(len(h), dtype=torch.bool)
    for layer in range(n_layers(params)):
        scores = edge_scores(params, layer, h, h).masked_fill(no_self, -torch.inf)
        edges = scores.softmax(dim=1).nan_to_num(0.0)  # a lone node has no edges: no message
        h = node_update(params, layer, h, edges @ h)
        y = torch.cat([labels[:n_labeled], (edges @ y)[n_labeled:]])
        states.append(h)
    return states, y


def query_logits(
    params: Tensors,
    states: list[torch.Tensor],
    final_labels: torch.Tensor,
    support_targets: torch.Tensor,
    query: torch.Tensor,
    query_cosines: torch.Tensor,
    temperature: torch.Tensor | float,
) -> torch.Tensor:
    """Logits (n_query, n_classes) of queries that read from the graph without joining it.

    ``query`` (n_query, w) are the queries' projected states; ``query_cosines`` (n_query,
    n_classes) their cosines to the class prototypes of the centred embeddings. The first
    ``len(support_targets)`` nodes of ``states`` are the examples.
    """
    layers = n_layers(params)
    h = query
    for layer in range(layers):
        edges = edge_scores(params, layer, h, states[layer]).softmax(dim=1)
        h = node_update(params, layer, h, edges @ states[layer])
    final = states[layers]
    n_classes = final_labels.shape[1]
    prototypes = class_means(final[: len(support_targets)], support_targets, n_classes)
    node_cosines = F.normalize(h, dim=1) @ F.normalize(prototypes, dim=1).T
    read = edge_scores(params, layers, h, final).softmax(dim=1) @ final_labels
    scores = query_cosines + params["alpha"] * node_cosines + params["beta"] * read.add(1e-4).log()
    return scores / temperature


def gnn_logits(
    params: Tensors,
    support: torch.Tensor,
    targets: torch.Tensor,
    unlabeled: torch.Tensor,
    query: torch.Tensor,
    temperature: torch.Tensor | float,
) -> torch.Tensor:
    """Logits (n_query, n_classes) of one task, as meta-training and the learner compute them."""
    graph = GraphState.build(params, support, targets, unlabeled)
    return graph.logits(params, query, temperature)


class GraphState:
    """The graph of the examples and the pictures still to sort, after message passing."""

    def __init__(
        self,
        mean: torch.Tensor,
        prototypes: torch.Tensor,
        states: list[torch.Tensor],
        final_labels: torch.Tensor,
        targets: torch.Tensor,
    ):
        self.mean, self.prototypes, self.states = mean, prototypes, states
        self.final_labels, self.targets = final_labels, targets

    @classmethod
    def build(
        cls, params: Tensors, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor
    ) -> GraphState:
        mean = support.mean(dim=0)
        n_classes = int(targets.max()) + 1
        centred = simpleshot_normalize(support, "cl2", mean)
        prototypes = class_means(centred, targets, n_classes)
        pool = simpleshot_normalize(unlabeled, "cl2", mean)
        nodes = torch.cat([centred, pool]) @ params["w_in"].T
        labels = torch.cat(
            [
                F.one_hot(targets, n_classes).to(nodes.dtype),
                torch.full((len(pool), n_classes), 1.0 / n_classes),
            ]
        )
        states, final_labels = graph_states(params, nodes, labels, len(support))
        return cls(mean, prototypes, states, final_labels, targets)

    def logits(
        self, params: Tensors, query: torch.Tensor, temperature: torch.Tensor | float
    ) -> torch.Tensor:
        centred = simpleshot_normalize(query, "cl2", self.mean)
        cosines = centred @ F.normalize(self.prototypes, dim=1).T
        return query_logits(
            params,
            self.states,
            self.final_labels,
            self.targets,
            centred @ params["w_in"].T,
            cosines,
            temperature,
        )


def spread_subset(unlabeled: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` rows of ``unlabeled``, evenly spaced (deterministic)."""
    if len(unlabeled) <= limit:
        return unlabeled
    return unlabeled[torch.linspace(0, len(unlabeled) - 1, limit).round().long()]


class GraphNet(CheckpointedLearner):
    """A meta-trained graph neural network over the examples and the pictures still to sort.

    ``checkpoint`` is the meta-trained network (:class:`fsl_app.pretrained.Checkpoint`, which
    :func:`fsl_app.learners.create_learner` finds for the backbone). Without one, or with one
    made for another embedding size, the network keeps its untrained weights, which score by
    cosine to the class prototypes of centred embeddings, and ``notes_`` says so.
    ``temperature`` left at ``None`` comes from the checkpoint, else
    :data:`DEFAULT_TEMPERATURE`.

    After ``fit``: ``params_`` the network's tensors, ``graph_`` the graph after message
    passing (examples first, then at most :data:`MAX_UNLABELED_NODES` pictures still to sort),
    ``temperature_``, ``checkpoint_`` (or None) and ``notes_``. Logits are of shape
    (n_query, n_classes).
    """

    name: ClassVar[str] = "gnn"

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        check_temperature(self.temperature)
        found = usable_checkpoint(
            self,
            support.shape[1],
            self.notes_,
            what="graph network",
            untrained="The graph network scored queries by their cosine to the class prototypes",
        )
        self.checkpoint_ = found
        self.params_ = dict(found.tensors) if found else init_gnn(support.shape[1])
        learned = math.exp(found.tensors["log_temperature"].item()) if found else None
        self.temperature_ = float(self.temperature or learned or DEFAULT_TEMPERATURE)
        pool = spread_subset(unlabeled, MAX_UNLABELED_NODES)
        self.graph_ = GraphState.build(self.params_, support, targets, pool)

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.graph_.logits(self.params_, chunk, self.temperature_)
                for chunk in query.split(QUERY_CHUNK)
            ]
        )

    def logits_module(self) -> torch.nn.Module:
        return _GraphLogits(self)


class _GraphLogits(torch.nn.Module):
    """The fitted graph's query readout in one piece (no chunks), for export."""

    def __init__(self, learner: GraphNet):
        super().__init__()
        self.learner = learner

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        learner = self.learner
        return learner.graph_.logits(learner.params_, embedding, learner.temperature_)

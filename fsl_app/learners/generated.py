"""Generated examples by distribution calibration (Yang, Liu & Xu, ICLR 2021, arXiv:2101.06395).

A class seen through one to five examples has a poorly known spread. Distribution calibration
borrows it from the base classes: after a power transform that makes the features more
Gaussian (Tukey's ladder, ``x -> x^power``), each example's class is modelled as a Gaussian whose
mean is the average of the example and the means of its ``neighbours`` nearest base classes,
and whose covariance is the average of theirs plus ``alpha``; ``per_class`` features are sampled
from these Gaussians and a classifier (``head``: the logistic regression of ``linear`` or the
class centres of ``protonet``) is fitted on the real and generated examples together.

The base-class statistics are computed from the embeddings of the base set
(:mod:`fsl_app.training.generated`) and shipped per backbone as
``pretrained/generated-<backbone>.safetensors``: ``means`` (n_base, dim), and each class's
covariance as a low-rank factor ``factors`` (n_base, dim, rank) plus the rest of its diagonal
``residual`` (n_base, dim), in half precision: 78 full 1280 x 1280 covariances would take 255 MB,
this takes a few. Without the file, or for embeddings of another size, nothing is generated and
the head is fitted on the examples alone (``notes_`` says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from fsl_app.learners.base import FewShotLearner, usable_checkpoint

if TYPE_CHECKING:
    from fsl_app.pretrained import Checkpoint

Tensors = dict[str, torch.Tensor]
Head = Literal["linear", "protonet"]
HEADS: tuple[str, ...] = ("linear", "protonet")

# The paper's settings (Yang et al. 2021, miniImageNet): power 0.5, two neighbours, alpha 0.21;
# it samples 750 features per class and fits a logistic regression, here 100 and class centres by
# default: the logistic regression on 500 features took 1-3 s a fit on this 2-core CPU (the app
# refits at every label, and calibration refits more), for 1-2 points more at 1 shot
# (pretrained/generated-tf_efficientnet_lite0.md).
DEFAULT_POWER = 0.5
DEFAULT_NEIGHBOURS = 2
DEFAULT_ALPHA = 0.21
DEFAULT_PER_CLASS = 100


def tukey(features: torch.Tensor, power: float) -> torch.Tensor:
    """Tukey's ladder of powers, ``x^power`` (``log x`` for power 0), on non-negative features.

    Pooled CNN features are non-negative; anything below zero is clipped. Power 1 is the
    identity (no clipping either): the learner without base statistics transforms nothing.
    """
    if power == 1:
        return features
    features = features.clamp_min(0.0)
    return features.clamp_min(1e-6).log() if power == 0 else features.pow(power)


def base_statistics(features: torch.Tensor, labels: list, rank: int) -> Tensors:
    """Per-class mean and covariance of (power-transformed) base features (n, dim), compactly.

    Each covariance ``S`` is kept as ``F F^T + diag(r)``: ``F`` (dim, rank) from its top
    eigenvectors scaled by the square roots of their eigenvalues, ``r`` what its diagonal has
    beyond ``F F^T``. Returns ``means`` (n_base, dim), ``factors`` (n_base, dim, rank) and
    ``residual`` (n_base, dim).
    """
    means, factors, residuals = [], [], []
    for name in sorted(set(labels)):
        rows = features[torch.as_tensor([label == name for label in labels])]
        mean = rows.mean(dim=0)
        centred = (rows - mean).double()
        # the covariance's eigenvectors are the right singular vectors of the centred rows
        _, singular, vectors = torch.linalg.svd(centred, full_matrices=False)
        scale = singular[:rank] / max(len(rows) - 1, 1) ** 0.5
        factor = torch.zeros(features.shape[1], rank, dtype=torch.float64)
        factor[:, : len(scale)] = vectors[: len(scale)].T * scale
        variance = centred.pow(2).sum(dim=0) / max(len(rows) - 1, 1)
        means.append(mean)
        factors.append(factor.float())
        residuals.append((variance - factor.pow(2).sum(dim=1)).clamp_min(0.0).float())
    return {
        "means": torch.stack(means),
        "factors": torch.stack(factors),
        "residual": torch.stack(residuals),
    }


def calibrated_samples(
    statistics: Tensors,
    support: torch.Tensor,
    targets: torch.Tensor,
    *,
    neighbours: int,
    alpha: float,
    per_class: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features sampled from each example's calibrated Gaussian, and their targets.

    ``support`` (n, dim) is power-transformed. Each example draws ``per_class / shots`` (at
    least one) samples: mean ``(x + sum of its neighbours' means) / (neighbours + 1)``,
    covariance ``mean of their covariances + alpha I``.
    """
    means = statistics["means"]
    k = min(neighbours, len(means))
    counts = torch.bincount(targets)
    samples, sample_targets = [], []
    for x, target in zip(support, targets, strict=True):
        n = max(1, -(-per_class // int(counts[target])))  # ceil
        nearest = torch.cdist(x[None], means)[0].topk(k, largest=False).indices
        mean = (x + means[nearest].sum(dim=0)) / (k + 1)
        # A sum of independent draws from each neighbour's N(0, S_i), scaled by 1/sqrt(k), has
        # covariance mean(S_i); the last term adds alpha I.
        factors, residual = statistics["factors"][nearest], statistics["residual"][nearest]
        low_rank = torch.randn(k, factors.shape[2], n, generator=generator)
        noise = torch.einsum("kdr,krn->nd", factors, low_rank)
        noise += (residual.sqrt()[:, None, :] * torch.randn(k, n, len(x), generator=generator)).sum(
            0
        )
        noise = noise / k**0.5 + alpha**0.5 * torch.randn(n, len(x), generator=generator)
        samples.append(mean + noise)
        sample_targets.append(torch.full((n,), int(target)))
    return torch.cat(samples), torch.cat(sample_targets)


class GeneratedExamples(FewShotLearner):
    """A classifier fitted on the examples and on features generated from calibrated Gaussians.

    ``checkpoint`` holds the base-class statistics (:class:`fsl_app.pretrained.Checkpoint`,
    found by :func:`fsl_app.learners.create_learner` for the backbone). ``head`` is the learner
    fitted on the power-transformed real and generated features (``"linear"``: logistic
    regression, as in the paper, slower; ``"protonet"``: class centres, the default, whose
    centres are then about the calibrated means: the sampled spread only matters to the
    logistic regression). ``seed`` fixes the samples, so the same examples always give the
    same model.

    After ``fit``: ``head_`` the fitted head, ``generated_`` the number of generated features,
    ``checkpoint_`` (or None) and ``notes_``. Logits are the head's, of shape
    (n_query, n_classes).
    """

    name: ClassVar[str] = "generated"
    calibration_folds: ClassVar[int] = 3  # each fit samples and fits a head: refit less

    def __init__(
        self,
        checkpoint: Checkpoint | None = None,
        missing_reason: str | None = None,
        head: Head = "protonet",
        per_class: int = DEFAULT_PER_CLASS,
        neighbours: int = DEFAULT_NEIGHBOURS,
        alpha: float = DEFAULT_ALPHA,
        seed: int = 0,
    ):
        self.checkpoint = checkpoint
        self.missing_reason = missing_reason
        self.head = head
        self.per_class = per_class
        self.neighbours = neighbours
        self.alpha = alpha
        self.seed = seed

    def _fit(self, support: torch.Tensor, targets: torch.Tensor, unlabeled: torch.Tensor) -> None:
        from fsl_app.learners.registry import create_learner

        if self.head not in HEADS:
            raise ValueError(f"Unknown head '{self.head}': use one of {', '.join(HEADS)}.")
        if int(self.per_class) < 0 or int(self.neighbours) < 1 or not self.alpha >= 0:
            raise ValueError(
                "per_class must be 0 or more, neighbours at least 1 and alpha not negative."
            )
        found = usable_checkpoint(
            self,
            support.shape[1],
            self.notes_,
            what="base-class statistics",
            untrained="No examples were generated; the head learned from the examples alone",
        )
        self.checkpoint_ = found
        self.power_ = float(found.metadata.get("power", DEFAULT_POWER)) if found else 1.0
        features = tukey(support, self.power_)
        if found and self.per_class:
            generated, generated_targets = calibrated_samples(
                found.tensors,
                features,
                targets,
                neighbours=int(self.neighbours),
                alpha=float(self.alpha),
                per_class=int(self.per_class),
                generator=torch.Generator().manual_seed(int(self.seed)),
            )
            features = torch.cat([features, generated])
            targets = torch.cat([targets, generated_targets])
        self.generated_ = len(features) - len(support)
        self.head_ = create_learner(self.head).fit(features.numpy(), targets.numpy())

    def _logits(self, query: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.head_.decision_function(tukey(query, self.power_).numpy()))

    def logits_module(self) -> torch.nn.Module:
        return _GeneratedLogits(self)


class _GeneratedLogits(torch.nn.Module):
    """The power transform, then the fitted head's own export module."""

    def __init__(self, learner: GeneratedExamples):
        super().__init__()
        self.power = learner.power_
        self.head = learner.head_.logits_module()

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(tukey(embedding, self.power))

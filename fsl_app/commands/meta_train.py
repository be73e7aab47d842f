"""``meta-train``: meta-learn a learner's head for a backbone on offline base classes.

``--learner maml`` meta-learns MAML's initialisation (:mod:`fsl_app.training.maml`);
``relation`` and ``siamese`` train their heads (:mod:`fsl_app.training.relation`,
:mod:`fsl_app.training.siamese`); ``gnn``, ``mann`` and ``meta-lstm`` train the graph network,
the memory's controller and the LSTM optimiser (:mod:`fsl_app.training.gnn`,
:mod:`fsl_app.training.mann`, :mod:`fsl_app.training.meta_lstm`). The learner registry names
each learner's trainer, and :func:`fsl_app.training.loop.meta_train` runs whichever it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsl_app.commands.common import (
    add_embedding_options,
    add_options_when_parsed,
    open_embedder,
    progress_bar,
)
from fsl_app.commands.predict import print_table
from fsl_app.datasets import OFFLINE_DATASETS, LabeledImages, image_folder_dataset, load_dataset
from fsl_app.errors import UnusableInputError
from fsl_app.learners import meta_trainable_learners

if TYPE_CHECKING:
    from fsl_app.embeddings import Embedder
    from fsl_app.evaluation.episodes import EvaluationResult
    from fsl_app.training.config import MetaTrainingConfig
    from fsl_app.training.loop import MetaProgress

# The trainers (torch) and the learners' defaults are imported when meta-train is the command:
# its options' defaults come from them, so they are added only then (add_options_when_parsed).
EVAL_QUERIES = 15  # per class, fewer when a class has too few images


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "meta-train",
        help="meta-learn a learner's head (MAML, relation, siamese) for a backbone",
        description=(
            "Meta-train a learner's head on the embeddings of base classes (embedded once, "
            "through the cache): MAML's initialisation, the relation module of Relation "
            "Networks or the projection head of Siamese networks. Hold some classes out, and "
            "report accuracy with a 95% confidence interval with and without meta-training and "
            "of protonet, on episodes of the held-out classes."
        ),
    )
    parser.set_defaults(handler=run)
    add_options_when_parsed(parser, _add_options)


def _add_options(parser: argparse.ArgumentParser) -> None:
    from fsl_app.learners.maml import DEFAULT_HIDDEN
    from fsl_app.learners.relation import DEFAULT_HIDDEN as RELATION_HIDDEN
    from fsl_app.learners.siamese import DEFAULT_HIDDEN as SIAMESE_HIDDEN
    from fsl_app.training.config import MetaTrainingConfig
    from fsl_app.training.maml import ALGORITHMS, MAMLOptions

    defaults, maml_defaults = MetaTrainingConfig(), MAMLOptions()
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", metavar="DIR", help="folder with one subfolder per class")
    data.add_argument(
        "--dataset",
        nargs="+",
        choices=OFFLINE_DATASETS,
        metavar="NAME",
        help=f"offline datasets ({', '.join(OFFLINE_DATASETS)})",
    )
    parser.add_argument(
        "--learner",
        default="maml",
        choices=meta_trainable_learners(),
        help="maml: its initialisation; relation: the relation module (episodes); siamese: "
        "the projection head (pairs); gnn: the graph network; mann: the memory's controller; "
        "meta-lstm: the LSTM optimiser. --algorithm, --inner-* and --no-meta-sgd are MAML's",
    )
    parser.add_argument(
        "--algorithm",
        default=maml_defaults.algorithm,
        choices=list(ALGORITHMS),
        help="maml: second-order meta-gradients; fomaml: first-order, cheaper; reptile: no "
        "meta-gradient, moves the initialisation toward each task's adapted weights",
    )
    parser.add_argument(
        "--no-meta-sgd",
        dest="meta_sgd",
        action="store_false",
        help="keep the inner step size fixed instead of learning one per parameter (Meta-SGD)",
    )
    parser.add_argument("--ways", type=int, default=defaults.ways, metavar="N")
    parser.add_argument("--shots", type=int, nargs="+", default=list(defaults.shots), metavar="K")
    parser.add_argument("--queries", type=int, default=defaults.queries, metavar="Q")
    parser.add_argument(
        "--episodes", type=int, default=defaults.episodes, metavar="N", help="tasks in all"
    )
    parser.add_argument(
        "--meta-batch",
        type=int,
        default=defaults.meta_batch,
        metavar="N",
        help="tasks per outer step",
    )
    parser.add_argument("--inner-steps", type=int, default=maml_defaults.inner_steps, metavar="N")
    parser.add_argument("--inner-lr", type=float, default=maml_defaults.inner_lr, metavar="LR")
    parser.add_argument(
        "--outer-lr",
        type=float,
        default=defaults.outer_lr,
        metavar="LR",
        help="Adam's learning rate (of the head, for relation and siamese)",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        metavar="N",
        help=f"hidden units of the head (default: maml {DEFAULT_HIDDEN}, relation "
        f"{RELATION_HIDDEN}, siamese {SIAMESE_HIDDEN})",
    )
    parser.add_argument(
        "--per-class", type=int, metavar="N", help="use at most N images of each class"
    )
    parser.add_argument(
        "--holdout-classes",
        type=int,
        default=3,
        metavar="N",
        help="classes of each dataset kept out of meta-training for the evaluation",
    )
    parser.add_argument("--eval-episodes", type=int, default=300, metavar="N")
    parser.add_argument(
        "--evaluate-on",
        nargs="+",
        default=[],
        choices=OFFLINE_DATASETS,
        metavar="NAME",
        help="also evaluate on all classes of these datasets (e.g. tuxpaint: cross-domain)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="checkpoint to write (default: pretrained/<learner>-<backbone>.safetensors)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=defaults.checkpoint_every,
        metavar="N",
        help="save the resumable training state every N tasks",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the training state next to --out"
    )
    parser.add_argument(
        "--last-stage",
        action="store_true",
        help="maml only: meta-learn the initialisation of the image model's last stage (first-"
        "order MAML on cached activations entering it; pretrained/maml-stage-<backbone>) "
        "instead of the head on embeddings; --inner-lr is the classifier's step size",
    )
    parser.add_argument(
        "--stage-step",
        type=float,
        default=3e-4,
        metavar="S",
        help="--last-stage: initial relative step of each stage tensor per inner step",
    )
    add_embedding_options(parser)


def run(args: argparse.Namespace) -> int:
    from fsl_app.pretrained import default_path
    from fsl_app.training.loop import (
        meta_train,
        score_on_episodes,
        split_classes,
        trainer_for,
        training_state_path,
    )

    if args.last_stage:
        return _run_last_stage(args)
    out = Path(args.out) if args.out else default_path(args.learner, args.backbone)
    try:
        config = _config(args)
        datasets = _load(args)
    except (ValueError, FileNotFoundError) as err:
        raise UnusableInputError(str(err)) from err
    with open_embedder(args) as embedder:
        started = time.perf_counter()
        features, labels, domains = _embed_all(embedder, datasets)
        extra = {name: _embed_all(embedder, [_load_one(name, args)]) for name in args.evaluate_on}
        embed_seconds = time.perf_counter() - started
        backbone_id = embedder.backbone.id
    try:
        held_out = split_classes(labels, domains, holdout=args.holdout_classes, seed=args.seed)
    except ValueError as err:
        raise UnusableInputError(str(err)) from err
    train = ~np.isin(labels, held_out)
    print(
        f"Embedded {len(labels)} images in {embed_seconds:.0f} s. Meta-training on "
        f"{len(set(labels[train]))} classes, holding out {len(held_out)}: {', '.join(held_out)}.",
        file=sys.stderr,
    )
    metadata = _data_record(args, datasets, labels[train], held_out)
    try:
        result = meta_train(
            features[train],
            labels[train],
            config,
            backbone=args.backbone,
            backbone_id=backbone_id,
            out=out,
            resume=args.resume,
            progress=_training_bar(),
            metadata=metadata,
        )
    except (ValueError, FileNotFoundError) as err:
        raise UnusableInputError(str(err)) from err
    print(
        f"Meta-trained on {result.episodes} tasks in {result.seconds:.0f} s"
        + (f" (resumed after {result.resumed_from})" if result.resumed_from else "")
        + f"; wrote {out} (training state: {training_state_path(out)}).",
        file=sys.stderr,
    )
    evaluations = {"held-out classes": (features[~train], labels[~train])}
    evaluations.update({name: (x, y) for name, (x, y, _) in extra.items()})
    baselines = trainer_for(args.learner).baselines(result.checkpoint)
    rows = []
    for name, (x, y) in evaluations.items():
        results = score_on_episodes(
            baselines,
            x,
            y,
            ways=config.ways,
            shots=config.shots,
            queries=EVAL_QUERIES,
            n_episodes=args.eval_episodes,
            seed=args.seed,
        )
        rows.extend(_row(name, r) for r in results)
    print_table(["evaluated on", "ways", "shots", "learner", "accuracy", "ECE"], rows)
    return 0


def _config(args: argparse.Namespace) -> MetaTrainingConfig:
    """The run's config; of the method flags, those the learner's options have (the others, such
    as MAML's --inner-steps for relation, are ignored) and those given (--hidden)."""
    from fsl_app.training.config import MetaTrainingConfig
    from fsl_app.training.loop import trainer_for

    options = trainer_for(args.learner).Options
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(options)
        if getattr(args, f.name, None) is not None
    }
    return MetaTrainingConfig(
        learner=args.learner,
        ways=args.ways,
        shots=tuple(args.shots),
        queries=args.queries,
        episodes=args.episodes,
        meta_batch=args.meta_batch,
        outer_lr=args.outer_lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        options=options(**given),
    )


def _load(args: argparse.Namespace) -> list[LabeledImages]:
    if args.data:
        return [image_folder_dataset(args.data).subset(args.per_class, args.seed)]
    return [_load_one(name, args) for name in args.dataset]


def _load_one(name: str, args: argparse.Namespace) -> LabeledImages:
    return load_dataset(name, per_class=args.per_class, seed=args.seed)


def _embed_all(
    embedder: Embedder, datasets: list[LabeledImages]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of every dataset, labels as "dataset:class" so classes never collide."""
    features, labels, domains = [], [], []
    for dataset in datasets:
        embedded = embedder.embed(dataset.sources, progress=progress_bar(dataset.name))
        for index, reason in embedded.errors:
            print(f"skipped {dataset.name} image {index + 1}: {reason}", file=sys.stderr)
        features.append(embedded.embeddings)
        labels.extend(f"{dataset.name}:{dataset.labels[i]}" for i in embedded.indices)
        domains.extend([dataset.name] * len(embedded.indices))
    return np.concatenate(features), np.asarray(labels), np.asarray(domains)


def _data_record(
    args: argparse.Namespace, datasets: list[LabeledImages], trained: np.ndarray, held_out: list
) -> dict:
    """What a checkpoint records of its data: datasets, sampling, classes trained and held out."""
    return {
        "datasets": [d.name for d in datasets],
        "per_class": args.per_class,
        "data_seed": args.seed,
        "classes": sorted(set(trained.tolist())),
        "held_out": held_out,
    }


def _training_bar() -> MetaProgress:
    from tqdm import tqdm

    bar = tqdm(desc="Meta-training", unit="task", disable=None, file=sys.stderr, leave=False)

    def update(done: int, total: int, running: dict[str, float]) -> None:
        bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{running['loss']:.3f}", acc=f"{running['accuracy']:.1%}")
        if done >= total:
            bar.close()

    return update


def _row(dataset: str, result: EvaluationResult) -> list[str]:
    return [
        dataset,
        str(result.ways),
        str(result.shots),
        result.learner,
        f"{result.accuracy:.1%} ± {result.ci95:.1%}",
        f"{result.ece:.3f}",
    ]


def _run_last_stage(args: argparse.Namespace) -> int:
    """``--last-stage``: last-stage MAML's initialisation on the activations entering the stage
    (computed once per image into the activation cache next to the embedding cache)."""
    import torch

    from fsl_app.backbones import load_backbone
    from fsl_app.pretrained import default_path
    from fsl_app.stage_cache import StageEmbedder, open_activation_cache
    from fsl_app.training.loop import split_classes, training_state_path
    from fsl_app.training.maml import STAGE_LEARNER, meta_train_last_stage

    if args.learner != "maml":
        raise UnusableInputError("--last-stage is for --learner maml only.")
    out = Path(args.out) if args.out else default_path(STAGE_LEARNER, args.backbone)
    try:
        config = _config(args)
        datasets = _load(args)
        embedder = StageEmbedder(
            load_backbone(args.backbone), device=args.device, cache=open_activation_cache()
        )
    except (ValueError, FileNotFoundError) as err:
        raise UnusableInputError(str(err)) from err
    parts, labels, domains = [], [], []
    for dataset in datasets:
        embedded = embedder.embed(dataset.sources, progress=progress_bar(dataset.name))
        parts.append(embedder.activations(embedded))
        labels.extend(f"{dataset.name}:{dataset.labels[i]}" for i in embedded.indices)
        domains.extend([dataset.name] * len(embedded.indices))
    activations, labels = torch.cat(parts), np.asarray(labels)
    try:
        held_out = split_classes(labels, domains, holdout=args.holdout_classes, seed=args.seed)
        train = ~np.isin(labels, held_out)
        result = meta_train_last_stage(
            activations[torch.as_tensor(train)],
            labels[train],
            config,
            stage=embedder.stage,
            out=out,
            resume=args.resume,
            progress=_training_bar(),
            stage_step=args.stage_step,
            metadata=_data_record(args, datasets, labels[train], held_out),
        )
    except (ValueError, FileNotFoundError) as err:
        raise UnusableInputError(str(err)) from err
    print(
        f"Meta-trained the last stage on {result.episodes} tasks in {result.seconds:.0f} s; "
        f"wrote {out} (training state: {training_state_path(out)}). Score it with "
        "benchmarks/maml_last_stage.py.",
        file=sys.stderr,
    )
    return 0

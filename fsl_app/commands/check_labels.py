"""``check-labels``: labeled examples that look like another class."""

from __future__ import annotations

import argparse
import json

from fsl_app.commands.common import add_embedding_options, open_embedder, progress_bar
from fsl_app.commands.predict import add_examples_option, print_table, report_examples
from fsl_app.errors import UnusableInputError
from fsl_app.files import utf8_text
from fsl_app.learners import DEFAULT_LEARNER, available_learners
from fsl_app.trust.label_check import DEFAULT_MIN_SCORE


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "check-labels",
        help="find labeled examples that look like another class",
        description=(
            "Judge each example of a folder of examples (one subfolder per class) by a model "
            "that has not seen it, and list those that look like another class: probably put "
            "in the wrong folder."
        ),
    )
    add_examples_option(parser)
    parser.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        metavar="P",
        help="flag an example when another class gets at least this probability "
        f"(default {DEFAULT_MIN_SCORE}, the 'sure' badge's threshold)",
    )
    parser.add_argument(
        "--learner", default=DEFAULT_LEARNER, choices=available_learners(), help="few-shot learner"
    )
    parser.add_argument("--format", default="table", choices=["table", "json"])
    add_embedding_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fsl_app.embedded_set import embed_folders
    from fsl_app.trust.label_check import find_mislabeled

    with open_embedder(args) as embedder:
        embedded = embed_folders(embedder, args.examples, progress=progress_bar)
    report_examples(embedded.unreadable, [embedded.left_out.note()])
    support, labels, _ = embedded.examples()
    paths = [
        utf8_text(name)
        for name, label in zip(embedded.names, embedded.labels, strict=True)
        if label
    ]
    if len(set(labels)) < 2:
        raise UnusableInputError("Checking labels needs two classes with readable examples.")
    suspects = find_mislabeled(support, labels, learner=args.learner, min_score=args.min_score)
    rows = [
        {
            "path": paths[s.index],
            "label": s.label,
            "suspected": s.suspected,
            "score": round(s.score, 4),
            "reason": s.reason,
        }
        for s in suspects
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"No example looks mislabeled ({len(paths)} checked).")
    else:
        print_table(
            ["path", "label", "looks like", "score"],
            [[r["path"], r["label"], r["suspected"], f"{r['score']:.0%}"] for r in rows],
        )
    return 0

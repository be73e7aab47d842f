"""Sorting a pile of pictures: accept what the model is sure of, and label without overwriting.

Two tabs can sort the same project. A picture labeled in one tab is left as it is when the other
tab, still showing it as a picture to sort, accepts it: the person is told it was already done,
instead of a silent change of their label or a click that seems to do nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fsl_app.classifier import Prediction
from fsl_app.plural import counted
from fsl_app.project.store import Store


def sure_choices(
    predictions: Iterable[Prediction], class_name: str | None = None
) -> dict[str, str]:
    """Picture id -> predicted class of the predictions badged "sure" (of ``class_name`` only,
    when given): what "Accept all sure" labels. "None of these" and marked pictures are never
    sure."""
    return {
        p.id: p.prediction
        for p in predictions
        if p.badge == "sure" and (class_name is None or p.prediction == class_name)
    }


@dataclass
class LabelOutcome:
    """What :func:`label_unlabeled` did: ``labeled`` id -> class; ``already`` id -> the class
    another tab gave it meanwhile (left as it is); ``gone`` ids no longer in the project."""

    labeled: dict[str, str] = field(default_factory=dict)
    already: dict[str, str] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)

    def messages(self, names: Mapping[str, str]) -> list[tuple[str, str]]:
        """(kind, sentence) for each thing the person should know, naming pictures by
        ``names`` (id -> file name)."""
        messages = []
        if len(self.labeled) == 1:
            ((image_id, class_name),) = self.labeled.items()
            messages.append(
                ("success", f"'{names.get(image_id, image_id)}' is now an example of {class_name}.")
            )
        elif self.labeled:
            per_class = Counter(self.labeled.values())
            messages.append(
                (
                    "success",
                    f"{counted(len(self.labeled), 'picture')} accepted as examples: "
                    + ", ".join(f"{name} {n}" for name, n in sorted(per_class.items())),
                )
            )
        messages.extend(
            (
                "info",
                f"'{names.get(image_id, image_id)}' was already labeled as {class_name} in "
                "another window; it was left as it is.",
            )
            for image_id, class_name in self.already.items()
        )
        messages.extend(
            (
                "warning",
                f"'{names.get(image_id, image_id)}' is no longer in the project (removed in "
                "another window), so it was not labeled.",
            )
            for image_id in self.gone
        )
        return messages


def label_unlabeled(store: Store, project_id: int, choices: Mapping[str, str]) -> LabelOutcome:
    """Label each picture ``id -> class`` of ``choices`` that is still a picture to sort.

    One that another window labeled meanwhile keeps its label, one removed meanwhile is left
    out; the outcome says which (see :class:`LabelOutcome`).
    """
    now = {image.sha256: image.class_name for image in store.list_images(project_id)}
    outcome = LabelOutcome()
    by_class: dict[str, list[str]] = {}
    for image_id, class_name in choices.items():
        if image_id not in now:
            outcome.gone.append(image_id)
        elif now[image_id] is not None:
            outcome.already[image_id] = now[image_id]
        else:
            by_class.setdefault(class_name, []).append(image_id)
    for class_name, ids in by_class.items():
        store.label(project_id, ids, class_name)
        outcome.labeled.update(dict.fromkeys(ids, class_name))
    return outcome


def sure_counts(predictions: Sequence[Prediction]) -> dict[str, int]:
    """How many "sure" predictions each class has, classes in the order they first appear."""
    return dict(Counter(sure_choices(predictions).values()))

"""The word a person reads beside a calibrated confidence: sure, fairly sure, unsure.

Light on purpose (no torch): the command line's parser reads :data:`SURE_CONFIDENCE` as the
label check's default, and the label check suggests a move only when the model would call it
"sure".
"""

from __future__ import annotations

from fsl_app.trust.calibration import MIN_CLASS_SIZE

# Calibrated confidence below which a prediction is shown as unsure, and at or above which it
# is shown as sure; in between it is "fairly sure". Calibrated, so "sure" is right about 8 in 10.
SURE_CONFIDENCE = 0.8
UNSURE_CONFIDENCE = 0.5
BADGES = ("sure", "fairly sure", "unsure", "none of these", "marked none of these")
# "marked none of these": the user said so; the model's guess is not shown as an answer.
MARKED = "marked none of these"
# What a confidence promises, in one sentence for every page that shows confidences. It holds for
# pictures of the user's classes; a picture of another kind can still look like a class (issue 12's
# project: a hammer shown as a bird at 81-99% in 9 of 30 draws at 4 photos a class), so the
# sentence does not promise that "none of these" catches every one.
CONFIDENCE_MEANING = (
    f'of the pictures of your classes shown as "{SURE_CONFIDENCE:.0%} sure", about '
    f'{SURE_CONFIDENCE * 10:.0f} in 10 should be right. "None of these" means a picture is '
    "unlike the examples of every class; it does not catch every picture of other things."
)


def confidence_caption(tuned_on: str) -> str:
    """The caption under a table of confidences: what they are tuned on (``"your own
    examples"``), from when, and what they promise."""
    return (
        f"Confidence is tuned on {tuned_on} once two classes have {MIN_CLASS_SIZE} examples or "
        f"more: {CONFIDENCE_MEANING}"
    )


def badge(confidence: float, unknown: bool) -> str:
    """The word a person reads beside a prediction, one of :data:`BADGES`."""
    if unknown:
        return "none of these"
    if confidence >= SURE_CONFIDENCE:
        return "sure"
    if confidence >= UNSURE_CONFIDENCE:
        return "fairly sure"
    return "unsure"

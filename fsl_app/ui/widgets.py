"""Small pieces of UI the pages share: thumbnails, badges, upload reports."""

from __future__ import annotations

import io
import re
import time

import streamlit as st
from PIL import Image, ImageOps

from fsl_app.classifier import Prediction
from fsl_app.images import ImageLoadError, load_image
from fsl_app.plural import counted
from fsl_app.project.store import AddReport, Store, StoreError

THUMBNAIL_SIDE = 192
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")
BADGE_COLOURS = {
    "sure": "green",
    "fairly sure": "blue",
    "unsure": "orange",
    "none of these": "red",
    "marked none of these": "violet",
}


@st.cache_data(show_spinner=False, max_entries=5000)
def _thumbnail(_store: Store, root: str, sha256: str, side: int) -> bytes | None:
    try:
        data = _store.image_bytes(sha256)
    except StoreError:
        return None
    return _square_jpeg(data, side)


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail_of(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A small JPEG of a picture that is not stored (an upload), None if it is no picture."""
    return _square_jpeg(data, side)


def _square_jpeg(data: bytes, side: int) -> bytes | None:
    try:
        # Decoded no bigger than a thumbnail needs (see load_image's min_side).
        picture = load_image(data, min_side=side).image
    except ImageLoadError:
        return None
    # Square, the picture whole in the middle: a grid of them lines up.
    picture = ImageOps.pad(picture, (side, side), Image.Resampling.LANCZOS, color="white")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def thumbnail(store: Store, sha256: str, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A small JPEG of a stored image (decoded once per server), None if its file is gone."""
    return _thumbnail(store, str(store.root), sha256, side)


def plain(text: str) -> str:
    """``text`` typed by a user, escaped so that Streamlit's markdown shows it as typed.

    Every markdown-taking call (st.write, st.caption, st.info, titles, widget, tab and
    expander labels, image captions) gets user text through this: a name like
    ``![t](http://host/x.png)`` would otherwise make the browser fetch that address.
    """
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def show_thumbnail(store: Store, sha256: str, caption: str | None = None, width: int = 150) -> None:
    """A stored picture with ``caption`` (a file or class name: shown as typed)."""
    data = thumbnail(store, sha256)
    if data is None:
        st.caption(f"(picture missing) {plain(caption or '')}")
    else:
        st.image(data, caption=None if caption is None else plain(caption), width=width)


def show_badge(prediction: Prediction) -> None:
    label = (
        prediction.verdict
        if prediction.unknown
        else f"{prediction.badge}: {prediction.confidence:.0%}"
    )
    # st.badge escapes square brackets itself: escaping them here too would show a backslash.
    label = plain(label).replace("\\[", "[").replace("\\]", "]")
    st.badge(label, color=BADGE_COLOURS[prediction.badge])


def runner_up_text(prediction: Prediction) -> str | None:
    """The next most probable class and its calibrated probability, on the scale the badge
    shows: how close the answer came to being another class."""
    if prediction.runner_up is None or prediction.marked:
        return None
    chance = prediction.probabilities[prediction.runner_up]
    return f"next most likely: {prediction.runner_up} ({chance:.0%})"


def add_report_messages(report: AddReport, where: str) -> list[tuple[str, str]]:
    """What happened to an upload, as (kind, sentence): added, already there, refused and why."""
    messages = []
    if report.added:
        messages.append(("success", f"Added {counted(len(report.added), 'picture')} to {where}."))
    for duplicate in report.duplicates:
        place = f"'{duplicate.class_name}'" if duplicate.class_name else "the unlabeled pictures"
        messages.append(
            (
                "info",
                f"'{duplicate.name}' is already in the project (as '{duplicate.existing_name}' "
                f"in {place}); it was not added twice.",
            )
        )
    messages.extend(
        ("warning", f"'{rejected.name}' was not added: {rejected.message}")
        for rejected in report.rejected
    )
    return messages


FLASH_KEY = "_flash_messages"


def flash(messages: list[tuple[str, str]]) -> None:
    """Keep messages to show after the next rerun (st.success, st.info, ... by kind).

    The messages are plain text, shown as written: they quote file and class names, so they
    are escaped when shown, never by the caller.
    """
    st.session_state.setdefault(FLASH_KEY, []).extend(messages)


def show_flashed() -> None:
    for kind, text in st.session_state.pop(FLASH_KEY, []):
        getattr(st, kind)(plain(text))


def upload_key(name: str) -> str:
    """A key for a file uploader that :func:`clear_upload` empties after its files are taken."""
    return f"{name}_{st.session_state.get(f'_upload_round_{name}', 0)}"


def clear_upload(name: str) -> None:
    st.session_state[f"_upload_round_{name}"] = st.session_state.get(f"_upload_round_{name}", 0) + 1


def probability_bars(prediction: Prediction, classes: list[str]) -> None:
    """One bar per class, in ``classes``' order, with its calibrated probability in percent:
    the numbers behind the prediction's badge, never computed another way."""
    for name in classes:
        chance = prediction.probabilities.get(name, 0.0)
        st.progress(min(max(chance, 0.0), 1.0), text=f"{plain(name)}: {chance:.0%}")


def camera_shot(photo) -> tuple[str, bytes]:
    """(name, bytes) of a ``st.camera_input`` photo, for the store like any upload.

    The browser names every shot "image.jpg"; the time it was taken tells shots apart in
    lists and in exported folders.
    """
    return f"camera {time.strftime('%Y-%m-%d %H.%M.%S')}.jpg", photo.getvalue()

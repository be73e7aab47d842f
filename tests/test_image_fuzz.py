"""Fuzzing the image door: whatever the bytes, load_image succeeds or raises ImageLoadError.

Real pictures (scikit-image's bundled photographs) are encoded in each format, then cut short,
bit-flipped, overwritten in their headers or spliced; hypothesis runs derandomized, so CI
sees the same few hundred files every time, each within a deadline.
"""

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from fsl_app.images import ImageLoadError, load_image


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


_SMALL = Image.fromarray(data.chelsea()).reduce(4)
_ASTRONAUT = Image.fromarray(data.astronaut()).reduce(8)
SEEDS = [
    _encode(_SMALL, "JPEG", quality=80),
    _encode(_ASTRONAUT, "JPEG", progressive=True),
    _encode(_SMALL, "PNG"),
    _encode(_ASTRONAUT.convert("P"), "PNG", transparency=0),
    _encode(_SMALL, "WEBP", quality=70),
    _encode(_ASTRONAUT, "WEBP", lossless=True),
    _encode(_SMALL, "GIF"),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    payload = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "flip", "header", "splice", "end_marker"]))
        if not payload:
            break
        at = draw(st.integers(0, len(payload) - 1))
        if kind == "cut":
            del payload[at:]
        elif kind == "flip":
            payload[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "header":
            # Sizes, chunk lengths and marker lengths live in the first bytes.
            start = draw(st.integers(0, min(len(payload), 64) - 1))
            payload[start : start + 4] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "splice":
            payload[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            payload[at:] = b"\xff\xd9"
    return bytes(payload)


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seeds_load(seed: int) -> None:
    assert load_image(SEEDS[seed]).image.mode == "RGB"


@settings(
    max_examples=300,
    derandomize=True,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(payload=mutated(), min_side=st.sampled_from([None, 16]))
def test_mutated_files_load_or_raise_image_load_error(payload: bytes, min_side: int | None) -> None:
    try:
        loaded = load_image(payload, min_side=min_side)
    except ImageLoadError as err:
        assert str(err).startswith("'image' is not a readable image: ")
    else:
        assert loaded.image.mode == "RGB"
        assert min(loaded.image.size) >= 1

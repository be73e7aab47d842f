"""Tests for fsl_app.images, the one door for image bytes.

Pictures are real photographs bundled with scikit-image (no download), encoded with PIL in each
format; hostile files are built byte by byte so they stay tiny however large they claim to be.
"""

import hashlib
import io
import pickle
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data

from fsl_app import images
from fsl_app.images import ImageLoadError, LoadedImage, is_image_path, load_image

CHELSEA_SIZE = (451, 300)  # (width, height) of skimage.data.chelsea()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares any size but carries almost no data: a bomb costs nothing to build."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="module")
def chelsea_jpeg(chelsea: Image.Image) -> bytes:
    return encode(chelsea, "JPEG", quality=90)


@pytest.fixture(scope="module")
def chelsea_png(chelsea: Image.Image) -> bytes:
    return encode(chelsea, "PNG")


def assert_refused(
    source: bytes | Path, shown_name: str, reason_start: str, /, **load_options: object
) -> None:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **load_options)
    err = caught.value
    assert err.name == shown_name
    assert err.reason.startswith(reason_start), err.reason
    assert str(err) == f"'{shown_name}' is not a readable image: {err.reason}"


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "max_mean_error"),
    [("JPEG", 6), ("PNG", 0), ("WEBP", 6), ("BMP", 0), ("GIF", 12), ("TIFF", 0)],
)
def test_each_format_loads_to_rgb(chelsea: Image.Image, fmt: str, max_mean_error: int) -> None:
    loaded = load_image(encode(chelsea, fmt), name=f"cat.{fmt.lower()}")

    assert loaded.image.mode == "RGB"
    assert loaded.image.size == loaded.original_size == CHELSEA_SIZE
    error = np.abs(np.asarray(loaded.image, dtype=int) - data.chelsea().astype(int)).mean()
    assert error <= max_mean_error


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "lime", "blue")]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(gif)).n_frames == 3

    loaded = load_image(gif)

    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((20, 15)) == (255, 0, 0)


def test_returned_image_is_plain_and_independent_of_the_file(
    tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(chelsea_jpeg)

    loaded = load_image(path)
    path.unlink()

    assert not isinstance(loaded.image, ImageFile.ImageFile)
    assert loaded.image.getpixel((0, 0)) == load_image(chelsea_jpeg).image.getpixel((0, 0))


# --- modes --------------------------------------------------------------------------------------


def _mode_l() -> Image.Image:
    return Image.new("L", (4, 2), 77)


def _mode_la() -> Image.Image:
    image = Image.new("LA", (4, 2), (0, 0))  # left half: black, fully transparent
    image.paste((200, 255), (2, 0, 4, 2))  # right half: opaque grey
    return image


def _mode_p() -> Image.Image:
    image = Image.new("P", (4, 2), 1)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    image.paste(2, (2, 0, 4, 2))
    return image


def _mode_p_transparent() -> Image.Image:
    image = _mode_p()
    image.paste(0, (0, 0, 2, 2))
    image.info["transparency"] = 0
    return image


def _mode_rgba() -> Image.Image:
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (2, 0, 4, 1))
    image.paste((0, 0, 0, 128), (2, 1, 4, 2))  # half-transparent black
    return image


def _mode_pa() -> Image.Image:
    return _mode_p().convert("PA")


def _mode_cmyk() -> Image.Image:
    image = Image.new("CMYK", (4, 2), (0, 0, 0, 0))  # no ink: white
    image.paste((0, 255, 255, 0), (2, 0, 4, 2))  # magenta + yellow: red
    return image


def _sixteen_bit(mode: str, values: list[int]) -> Image.Image:
    image = Image.new(mode, (4, 1))
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)
    return image


def _mode_1() -> Image.Image:
    image = Image.new("1", (4, 2), 0)
    image.paste(1, (2, 0, 4, 2))
    return image


def _mode_f(values: list[float]) -> Callable[[], Image.Image]:
    return lambda: Image.fromarray(np.array([values], dtype=np.float32))


def _convert(mode: str) -> Callable[[], Image.Image]:
    return lambda: Image.new("RGB", (4, 2), (255, 255, 255)).convert(mode)


WHITE, BLACK, RED, BLUE = (255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 0, 255)


@pytest.mark.parametrize(
    ("make", "fmt", "expected", "tolerance"),
    [
        pytest.param(_mode_l, "PNG", {(0, 0): (77, 77, 77)}, 0, id="L"),
        pytest.param(_mode_la, "PNG", {(0, 0): WHITE, (3, 1): (200, 200, 200)}, 0, id="LA"),
        pytest.param(_mode_p, "PNG", {(0, 0): RED, (3, 0): BLUE}, 0, id="P"),
        pytest.param(
            _mode_p_transparent, "PNG", {(0, 0): WHITE, (3, 0): BLUE}, 0, id="P-transparent"
        ),
        pytest.param(
            _mode_p_transparent, "GIF", {(0, 0): WHITE, (3, 0): BLUE}, 0, id="P-transparent-gif"
        ),
        pytest.param(
            _mode_rgba,
            "PNG",
            {(0, 0): WHITE, (3, 0): RED, (3, 1): (127, 127, 127)},
            1,
            id="RGBA-half-transparent",
        ),
        pytest.param(_mode_pa, "TIFF", {(0, 0): RED, (3, 0): BLUE}, 0, id="PA"),
        pytest.param(_mode_cmyk, "TIFF", {(0, 0): WHITE, (3, 0): RED}, 0, id="CMYK-tiff"),
        pytest.param(_mode_cmyk, "JPEG", {(0, 0): WHITE, (3, 0): RED}, 8, id="CMYK-jpeg"),
        pytest.param(
            lambda: _sixteen_bit("I;16", [0, 100 * 256, 100 * 256 + 255, 65535]),
            "PNG",
            {(0, 0): BLACK, (1, 0): (100,) * 3, (2, 0): (100,) * 3, (3, 0): WHITE},
            0,
            id="I;16",
        ),
        pytest.param(
            lambda: _sixteen_bit("I;16B", [0, 50 * 256, 200 * 256, 65535]),
            "TIFF",
            {(0, 0): BLACK, (1, 0): (50,) * 3, (2, 0): (200,) * 3, (3, 0): WHITE},
            0,
            id="I;16B",
        ),
        pytest.param(
            lambda: _sixteen_bit("I", [-5, 100 * 256, 65535, 70000]),
            "TIFF",
            {(0, 0): BLACK, (1, 0): (100,) * 3, (2, 0): WHITE, (3, 0): WHITE},
            0,
            id="I",
        ),
        pytest.param(_mode_1, "PNG", {(0, 0): BLACK, (3, 0): WHITE}, 0, id="1"),
        pytest.param(_mode_1, "BMP", {(0, 0): BLACK, (3, 0): WHITE}, 0, id="1-bmp"),
        pytest.param(
            _mode_f([0.0, 0.5, 1.0, float("nan")]),
            "TIFF",
            {(0, 0): BLACK, (1, 0): (128,) * 3, (2, 0): WHITE, (3, 0): BLACK},
            0,
            id="F-unit-range",
        ),
        pytest.param(
            _mode_f([-3.0, 100.4, 300.0, 255.0]),
            "TIFF",
            {(0, 0): BLACK, (1, 0): (100,) * 3, (2, 0): WHITE, (3, 0): WHITE},
            0,
            id="F-byte-range",
        ),
        pytest.param(_convert("YCbCr"), "TIFF", {(0, 0): WHITE}, 1, id="YCbCr"),
        pytest.param(_convert("LAB"), "TIFF", {(0, 0): WHITE}, 2, id="LAB"),
    ],
)
def test_each_mode_becomes_rgb(
    make: Callable[[], Image.Image],
    fmt: str,
    expected: dict[tuple[int, int], tuple[int, int, int]],
    tolerance: int,
) -> None:
    source = make()
    encoded = encode(source, fmt)
    # Guard the test itself: the file must really hold the mode under test.
    if fmt in ("PNG", "TIFF"):
        assert Image.open(io.BytesIO(encoded)).mode == source.mode

    image = load_image(encoded).image

    assert image.mode == "RGB"
    assert image.size == source.size
    for xy, colour in expected.items():
        got = image.getpixel(xy)
        assert all(abs(a - b) <= tolerance for a, b in zip(got, colour, strict=True)), (xy, got)


# --- orientation --------------------------------------------------------------------------------


def _marked_jpeg(orientation: int) -> bytes:
    """A 60x40 blue JPEG with a red block in its stored top-left corner, tagged with EXIF."""
    image = Image.new("RGB", (60, 40), BLUE)
    image.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize(
    ("orientation", "size", "red_corner"),
    [
        (1, (60, 40), (4, 4)),
        (3, (60, 40), (55, 35)),
        (6, (40, 60), (35, 4)),  # turned a quarter clockwise: top-left goes to top-right
        (8, (40, 60), (4, 55)),  # turned a quarter anticlockwise: top-left goes to bottom-left
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], red_corner: tuple[int, int]
) -> None:
    loaded = load_image(_marked_jpeg(orientation))

    assert loaded.image.size == loaded.original_size == size
    r, g, b = loaded.image.getpixel(red_corner)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_with_reduction_reports_full_upright_size() -> None:
    image = Image.new("RGB", (1600, 800), BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6

    loaded = load_image(encode(image, "JPEG", exif=exif.tobytes()), min_side=100)

    assert loaded.original_size == (800, 1600)
    width, height = loaded.image.size
    assert height > width and 100 <= width < 800


# --- refusals -----------------------------------------------------------------------------------


def test_refuses_zero_bytes() -> None:
    assert_refused(b"", "empty.jpg", "the file is empty", name="empty.jpg")


def test_refuses_text_renamed_as_jpeg() -> None:
    assert_refused(
        b"Shopping list: eggs, milk, bread.\n",
        "notes.jpg",
        "the file is not an image (or is in a format this app does not read: JPEG, PNG",
        name="notes.jpg",
    )


def test_refuses_formats_it_does_not_promise_to_read() -> None:
    icon = encode(Image.new("RGB", (16, 16), RED), "ICO")
    assert_refused(icon, "icon.ico", "the file is not an image", name="icon.ico")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_refuses_file_cut_in_half(chelsea: Image.Image, fmt: str) -> None:
    encoded = encode(chelsea, fmt)
    assert_refused(encoded[: len(encoded) // 2], "half", "the file is cut short", name="half")


def test_refuses_progressive_jpeg_cut_short(chelsea: Image.Image) -> None:
    encoded = encode(chelsea, "JPEG", progressive=True)
    assert_refused(encoded[:-100], "p.jpg", "the file is cut short", name="p.jpg")


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"restart_marker_blocks": 4}])
@pytest.mark.parametrize("kept", [0.3, 0.9, 0.99])
def test_refuses_jpeg_cut_short_with_its_end_marker_put_back(
    chelsea: Image.Image, options: dict[str, object], kept: float
) -> None:
    # libjpeg reads an early end marker as the end of the data and pads the rest with grey;
    # Pillow drops its warning, so before this check the file loaded without complaint.
    encoded = encode(chelsea, "JPEG", **options)
    cut = encoded[: int(len(encoded) * kept)] + b"\xff\xd9"
    assert_refused(cut, "cut.jpg", "the file is cut short", name="cut.jpg")


def test_cut_short_jpeg_is_refused_when_decoded_smaller(camera_jpeg: bytes) -> None:
    cut = camera_jpeg[: len(camera_jpeg) // 2] + b"\xff\xd9"
    assert_refused(cut, "image", "the file is cut short", min_side=300)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_whole_jpegs_are_not_taken_for_cut_short(name: str) -> None:
    picture = Image.fromarray(getattr(data, name)())
    for options in ({}, {"progressive": True}, {"optimize": True}, {"restart_marker_blocks": 2}):
        encoded = encode(picture, "JPEG", **options)
        assert load_image(encoded).image.size == picture.size
        # Bytes after the end marker (camera trailers, a second MPO picture) are not read.
        assert load_image(encoded + b"trailer").image.size == picture.size


def test_tux_paint_photos_load(photos: dict[str, list[Path]]) -> None:
    for path in [p for files in photos.values() for p in files][:20]:
        assert min(load_image(path).image.size) > 0


def jpeg_header(width: int, height: int, source: bytes) -> bytes:
    """``source`` (a real JPEG) with the size in its frame header changed."""
    start = next(source.find(m) for m in (b"\xff\xc0", b"\xff\xc2") if m in source)
    return source[: start + 5] + struct.pack(">HH", height, width) + source[start + 9 :]


def test_refuses_tiny_jpeg_claiming_a_huge_picture() -> None:
    tiny = encode(Image.new("RGB", (8, 8), RED), "JPEG")
    bomb = jpeg_header(30_000, 2_980, tiny)
    assert len(bomb) < 1000
    assert_refused(bomb, "image", "the file is too small (")


def test_refuses_tiny_png_claiming_a_huge_picture() -> None:
    # Under the pixel limit, but deflate cannot pack 81 MB of rows into a few dozen bytes.
    assert_refused(png_header(9_000, 9_000), "image", "the file is too small (")


def test_flat_pictures_compress_well_and_still_load() -> None:
    # The most compressible real files sit just above the floor: it must not refuse them.
    for mode, fmt in (("1", "PNG"), ("L", "PNG"), ("RGB", "PNG"), ("L", "JPEG"), ("RGB", "JPEG")):
        flat = encode(Image.new(mode, (4000, 3000), 0), fmt, optimize=True)
        assert load_image(flat, min_side=100).original_size == (4000, 3000), (mode, fmt)


def test_refuses_jpeg_cut_inside_its_header(chelsea_jpeg: bytes) -> None:
    assert_refused(chelsea_jpeg[:20], "stub.jpg", "the file is damaged", name="stub.jpg")


def test_refuses_png_with_corrupted_middle(chelsea_png: bytes) -> None:
    middle = len(chelsea_png) // 2
    corrupted = chelsea_png[:middle] + bytes(64) + chelsea_png[middle + 64 :]
    assert_refused(corrupted, "bad.png", "the file is damaged", name="bad.png")


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        ((60_000, 60_000), "over 89.5 megapixels"),  # PIL's hard error, beyond 2x its limit
        ((12_000, 10_000), "over 89.5 megapixels"),  # PIL's warning, which we make an error
        ((40_000, 10), "40000 x 10 pixels"),  # few pixels, but an absurd side
    ],
)
def test_refuses_huge_pictures_from_the_header(size: tuple[int, int], shown: str) -> None:
    assert_refused(
        png_header(*size), "bomb.png", f"the picture is too large ({shown})", name="bomb.png"
    )


def test_pixel_limit_holds_even_if_pil_check_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert_refused(png_header(12_000, 10_000), "image", "the picture is too large (12000 x 10000")


@pytest.mark.parametrize("size", [(0, 10), (10, 0)])
def test_refuses_picture_with_no_pixels(size: tuple[int, int]) -> None:
    assert_refused(png_header(*size), "flat.png", "the file is damaged", name="flat.png")


def test_refuses_missing_path(tmp_path: Path) -> None:
    assert_refused(tmp_path / "gone.jpg", "gone.jpg", "the file was not found")


def test_refuses_directory(tmp_path: Path) -> None:
    folder = tmp_path / "holiday.jpg"
    folder.mkdir()
    assert_refused(folder, "holiday.jpg", "it is a folder, not a file")


def test_refuses_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.png"
    path.touch()
    assert_refused(path, "zero.png", "the file is empty")
    with pytest.raises(ImageLoadError, match="empty"):
        images.read_image_bytes(path)


def test_refuses_files_over_the_byte_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "big.jpg"
    path.write_bytes(chelsea_jpeg)

    assert_refused(chelsea_jpeg, "image", "the file is too big")
    assert_refused(path, "big.jpg", "the file is too big")


def test_refuses_to_work_if_pil_is_told_to_pad_cut_short_files(
    monkeypatch: pytest.MonkeyPatch, chelsea_jpeg: bytes
) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(chelsea_jpeg[: len(chelsea_jpeg) // 2])


def test_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(ImageLoadError("x.jpg", "the file is empty")))
    assert (err.name, err.reason) == ("x.jpg", "the file is empty")
    assert str(err) == "'x.jpg' is not a readable image: the file is empty"
    assert isinstance(err, ValueError)


def test_broken_pillow_heif_does_not_stop_other_formats(
    monkeypatch: pytest.MonkeyPatch, chelsea_png: bytes
) -> None:
    monkeypatch.setattr(images, "_HEIF_AVAILABLE", True)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` now fails
    images._register_heif_opener.cache_clear()
    try:
        assert load_image(chelsea_png).image.size == CHELSEA_SIZE
    finally:
        images._register_heif_opener.cache_clear()


def test_min_side_must_be_positive(chelsea_jpeg: bytes) -> None:
    with pytest.raises(ValueError, match="min_side"):
        load_image(chelsea_jpeg, min_side=0)


# --- identity -----------------------------------------------------------------------------------


def test_sha256_is_of_the_original_bytes(chelsea_jpeg: bytes) -> None:
    expected = hashlib.sha256(chelsea_jpeg).hexdigest()
    assert images.image_sha256(chelsea_jpeg) == expected
    assert load_image(chelsea_jpeg).sha256 == expected


def test_path_and_bytes_give_the_same_image(tmp_path: Path, chelsea_png: bytes) -> None:
    path = tmp_path / "Cat.PNG"
    path.write_bytes(chelsea_png)

    from_path = load_image(path)
    from_bytes = load_image(chelsea_png)

    assert (from_path.name, from_bytes.name) == ("Cat.PNG", "image")
    assert load_image(str(path), name="kitty").name == "kitty"
    assert from_path.sha256 == from_bytes.sha256
    assert np.array_equal(np.asarray(from_path.image), np.asarray(from_bytes.image))
    assert images.read_image_bytes(path) == chelsea_png


def test_loaded_image_is_frozen(chelsea_png: bytes) -> None:
    loaded = load_image(chelsea_png)
    with pytest.raises(AttributeError):
        loaded.name = "other"  # type: ignore[misc]
    assert isinstance(loaded, LoadedImage)


# --- min_side -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camera_jpeg(chelsea: Image.Image) -> bytes:
    return encode(chelsea.resize((4000, 3000)), "JPEG", quality=85)


def test_min_side_decodes_big_jpeg_smaller(camera_jpeg: bytes) -> None:
    loaded = load_image(camera_jpeg, min_side=300)

    assert loaded.original_size == (4000, 3000)
    width, height = loaded.image.size
    assert 300 <= height < 3000
    assert abs(width / height - 4 / 3) < 0.01
    again = load_image(camera_jpeg, min_side=300)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(again.image))


def test_min_side_reduces_png_by_a_whole_factor(chelsea: Image.Image) -> None:
    png = encode(chelsea.resize((1200, 900)), "PNG", compress_level=1)

    loaded = load_image(png, min_side=200)

    assert loaded.original_size == (1200, 900)
    # 900 / 4 = 225 keeps the shorter side >= 200; 900 / 5 = 180 would not.
    assert loaded.image.size == (300, 225)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(load_image(png, min_side=200).image))


def test_min_side_leaves_small_pictures_alone(chelsea_jpeg: bytes) -> None:
    loaded = load_image(chelsea_jpeg, min_side=1000)
    assert loaded.image.size == loaded.original_size == CHELSEA_SIZE


# --- suffixes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("cat.jpg", True),
        ("CAT.JPG", True),
        ("photo.JpEg", True),
        (Path("scan.TIFF"), True),
        ("shot.webp", True),
        ("notes.txt", False),
        ("README", False),
        ("archive.jpg.zip", False),
    ],
)
def test_is_image_path(path: str | Path, expected: bool) -> None:
    assert is_image_path(path) is expected


def test_supported_suffixes() -> None:
    core = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    assert core <= images.SUPPORTED_SUFFIXES
    assert images.SUPPORTED_SUFFIXES - core <= {".heic", ".heif"}

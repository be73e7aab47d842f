"""The one door for image bytes.

Every picture the app sees (uploaded in the browser, found in a folder, built by a test) comes
through :func:`load_image`. Keeping that in one place means the rest of the app can assume a
fully decoded RGB picture the right way up, and that a person who picks a bad file gets one kind
of error, :class:`ImageLoadError`, whose message says in plain words what is wrong and what to do,
instead of a PIL traceback. It is also the one place that defends against hostile or broken files:
decompression bombs, absurd dimensions, and files that are cut short.
"""

import functools
import hashlib
import importlib.util
import io
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageChops, ImageFile, UnidentifiedImageError

MAX_FILE_BYTES = 100_000_000
# Pillow's own default (1024**3 // 4 // 3, a quarter GiB of 3-byte pixels), kept rather than
# raised: Image.MAX_IMAGE_PIXELS is process-wide, so raising it here would weaken the bomb check
# of every other Pillow caller in the app. The 89.5-100 MP range it gives up holds no common
# camera (phones jump from 50 to 108 and 200 MP, medium format is 102 MP), and a full decode of
# a non-JPEG is ~4 bytes a pixel, so this also bounds one upload at ~360 MB.
MAX_PIXELS = 1024**3 // 4 // 3
MAX_SIDE = 30_000

# find_spec only looks for the package; importing and registering it waits for the first load.
_HEIF_AVAILABLE = importlib.util.find_spec("pillow_heif") is not None

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | ({".heic", ".heif"} if _HEIF_AVAILABLE else set())
)

# PIL can open many more formats (PSD, ICO, EPS, ...); each is more parser code exposed to
# untrusted bytes, so Image.open is restricted to the formats we promise to read.
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF") + (
    ("HEIF",) if _HEIF_AVAILABLE else ()
)
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF" + (", HEIC" if _HEIF_AVAILABLE else "")

# Opening bytes of the formats above. A file that starts like one of them but cannot be opened is
# a damaged image, and telling the person "not an image" would send them looking in the wrong place.
_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\0",
    b"MM\0*",
)

# Formats whose decoder can scale down while decoding (JPEG DCT scaling); MPO is the multi-picture
# JPEG some cameras write.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_DRAFT_SCALES = (8, 4, 2)

# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Those that turn the picture a quarter turn, swapping width and height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})

# Modes Image.reduce averages correctly; others (palettes, 1-bit, 16-bit) are converted first.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"})

# Fewest bytes a file can hold for its pixels, from each format's best possible compression.
# Deflate (PNG) codes at best 258 bytes of match in 2 bits: 1032 to 1. Huffman JPEG spends at
# least one bit per 8x8 block on its DC code; a component may be subsampled up to 4x4, so count
# one bit per 32x32 pixels. Arithmetic-coded JPEG (SOF9 and up) has no such floor.
_DEFLATE_MAX_RATIO = 1032
_JPEG_PIXELS_PER_BIT = 32 * 32
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_JPEG_SOF_HUFFMAN = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7})
_JPEG_SOF = _JPEG_SOF_HUFFMAN | {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# A marker inside entropy-coded data: 0xFF not followed by a stuffed 0, a restart or more fill.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Bytes slipped in before a JPEG's end marker to see whether the decoder reads them (see
# _jpeg_reads_past_its_data). Not 0xFF, so they cannot form a marker; mostly one bits, because
# libjpeg pads a cut-short file with zero bits and the probe must decode differently from that.
# Measured on 25 files x 23 cut points, this missed 1 cut (one landing exactly on a restart
# marker, where no interval is cut); a varied pattern starting with zero bits missed 13.
_JPEG_FILLER = b"\xfe" * 512

_CUT_SHORT = (
    "the file is cut short — it may not have finished downloading or copying; get it again "
    "or pick another file"
)
_DAMAGED = "the file is damaged — export it again or pick another file"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_WHITE = (255, 255, 255, 255)


class ImageLoadError(ValueError):
    """Raised for any input that is not a usable image.

    ``str(err)`` is a complete sentence a non-programmer can act on; ``name`` and ``reason`` are
    kept separately so a UI can lay them out its own way.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"'{name}' is not a readable image: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # The default pickling replays __init__ with the message only; rebuild from the parts so
        # the error survives crossing a process boundary.
        return type(self), (self.name, self.reason)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded picture: RGB, upright, fully in memory, and independent of its source."""

    image: Image.Image
    sha256: str
    name: str
    original_size: tuple[int, int]


def image_sha256(data: bytes) -> str:
    """Identity of an image: the hex sha256 of its original bytes."""
    return hashlib.sha256(data).hexdigest()


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether a file looks like a picture we read, judged by its suffix (for folder scans)."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def read_image_bytes(path: str | os.PathLike[str], *, name: str | None = None) -> bytes:
    """Read an image file, refusing missing, unreadable, empty or oversized files.

    Raises ImageLoadError (never OSError) so callers have one error type to show people.
    ``name`` is the display name used in the message; it defaults to the file name.
    """
    name = _display_name(path) if name is None else name
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageLoadError(name, "it is a folder, not a file")
        # Opening a pipe or device could block forever or read without end.
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError(name, "it is not an ordinary file")
        _check_byte_count(info.st_size, name)
        with open(path, "rb") as file:
            # One byte past the size stat() gave, so a file that grew since is noticed; asking
            # for the whole limit at once would allocate (and fault in) 100 MB for every file.
            data = file.read(info.st_size + 1)
            if len(data) > info.st_size:
                # It grew: read on up to one byte past the limit, so it is still caught.
                data += file.read(MAX_FILE_BYTES + 1 - len(data))
    except FileNotFoundError as err:
        raise ImageLoadError(name, "the file was not found — check its name and folder") from err
    except PermissionError as err:
        raise ImageLoadError(
            name, "this app is not allowed to read the file — check its permissions"
        ) from err
    except OSError as err:
        raise ImageLoadError(name, f"the file could not be read ({err.strerror or err})") from err
    _check_byte_count(len(data), name)
    return data


def load_image(
    source: bytes | str | os.PathLike[str],
    *,
    name: str | None = None,
    min_side: int | None = None,
) -> LoadedImage:
    """Validate and decode an image into an upright, fully loaded RGB picture.

    ``source`` is the file's bytes (display name defaults to "image") or a path (display name
    defaults to the file name). ``min_side`` lets huge photos decode faster: the picture is scaled
    down by a whole factor, but never so far that its shorter side drops below ``min_side``.
    ``original_size`` always reports the full upright size.

    Raises ImageLoadError for anything that is not a usable image.
    """
    _check_min_side(min_side)
    if isinstance(source, bytes):
        name = "image" if name is None else name
        data = source
    else:
        name = _display_name(source) if name is None else name
        data = read_image_bytes(source, name=name)
    image, original_size = decode_image_bytes(data, name, min_side)
    return LoadedImage(
        image=image, sha256=image_sha256(data), name=name, original_size=original_size
    )


def decode_image_bytes(
    data: bytes, name: str, min_side: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image` of bytes without the sha256, for callers that have hashed them already."""
    _check_min_side(min_side)
    _check_byte_count(len(data), name)
    return _decode(data, name, min_side)


def _check_min_side(min_side: int | None) -> None:
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, got {min_side}")


def _display_name(path: str | os.PathLike[str]) -> str:
    return Path(path).name or os.fspath(path)


def _megabytes(count: int) -> str:
    return f"{count / 1_000_000:.1f}".removesuffix(".0") + " MB"


def _check_byte_count(count: int, name: str) -> None:
    if count == 0:
        raise ImageLoadError(name, "the file is empty")
    if count > MAX_FILE_BYTES:
        raise ImageLoadError(
            name,
            f"the file is too big ({_megabytes(count)}); the limit is "
            f"{_megabytes(MAX_FILE_BYTES)} — shrink it or pick another file",
        )


def _megapixels(count: int) -> str:
    return f"{count / 1_000_000:.1f}".removesuffix(".0")


def _too_large(name: str, size_text: str) -> ImageLoadError:
    return ImageLoadError(
        name,
        f"the picture is too large ({size_text}); the limit is {_megapixels(MAX_PIXELS)} "
        f"megapixels and {MAX_SIDE} pixels on a side — shrink it or pick another file",
    )


def _check_dimensions(size: tuple[int, int], name: str) -> None:
    # No check for a side of 0: PIL's ImageFile refuses those itself, and they arrive here as
    # UnidentifiedImageError, reported as a damaged file.
    width, height = size
    if max(size) > MAX_SIDE or width * height > MAX_PIXELS:
        raise _too_large(name, f"{width} x {height} pixels")


@functools.cache
def _register_heif_opener() -> None:
    if not _HEIF_AVAILABLE:
        return
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        # Installed but broken (say, a missing native library): keep reading every other format;
        # HEIC files are then refused like any format we do not read.
        return
    register_heif_opener()


def _require_strict_truncation() -> None:
    # With this flag on, PIL pads a cut-short file with grey and reports success; the app would
    # then learn from half a picture. It is process-wide, so fail loudly if anything turned it on.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; fsl_app.images needs it off so that "
            "cut-short files are refused instead of silently padded"
        )


def _decode(data: bytes, name: str, min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    _require_strict_truncation()
    _register_heif_opener()
    try:
        # catch_warnings is not thread-safe before Python 3.14, but the worst a race can do is
        # leave this "error" filter in place, which only makes PIL's bomb warning strict everywhere.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as file:
                # Image.open reads only the header, so these run before any pixel is decoded.
                _check_dimensions(file.size, name)
                _check_plausible_length(data, file.size, name)
                width, height = file.size
                orientation = file.getexif().get(ExifTags.Base.Orientation)
                if orientation in _QUARTER_TURNS:
                    width, height = height, width
                if min_side is not None and file.format in _DRAFT_FORMATS:
                    _draft(file, min_side)
                # Decode everything now: errors surface here rather than at first use, and the
                # result no longer depends on the BytesIO closed on leaving this block.
                file.load()
                if file.format in _DRAFT_FORMATS and _jpeg_reads_past_its_data(data, file):
                    raise ImageLoadError(name, _CUT_SHORT)
                # Shrink first, in the file's own mode: turning and converting then touch only
                # the small picture, so a huge file costs one full-size buffer, not several.
                image = _reduce(file, min_side)
                if orientation in _UPRIGHT:
                    image = image.transpose(_UPRIGHT[orientation])
                image = _to_rgb(image)
    except (ImageLoadError, MemoryError):
        # Our own refusal, or a machine out of memory: neither says the file is damaged.
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large(name, f"over {_megapixels(MAX_PIXELS)} megapixels") from err
    except UnidentifiedImageError as err:
        if data.startswith(_SIGNATURES) or _is_webp(data):
            raise ImageLoadError(name, _DAMAGED) from err
        raise ImageLoadError(
            name,
            f"the file is not an image (or is in a format this app does not read: {_FORMAT_NAMES})",
        ) from err
    except Exception as err:
        # PIL reports broken data with many exception types (OSError, SyntaxError, ValueError,
        # struct.error, EOFError, ...); to a person they all mean the same thing.
        reason = _CUT_SHORT if _looks_cut_short(data, err) else _DAMAGED
        raise ImageLoadError(name, reason) from err
    return image, (width, height)


def _check_plausible_length(data: bytes, size: tuple[int, int], name: str) -> None:
    """Refuse a file too short to hold the picture its header claims, before decoding it.

    Such a file is a bomb or damaged: decoding it would fill a huge buffer with padding.
    """
    least = _least_length(data, size)
    if len(data) < least:
        width, height = size
        raise ImageLoadError(
            name,
            f"the file is too small ({len(data):,} bytes) for the {width} x {height} pixels it "
            f"claims (at least {least:,} bytes) — it is damaged; export it again or pick "
            "another file",
        )


def _least_length(data: bytes, size: tuple[int, int]) -> int:
    width, height = size
    if data.startswith(b"\x89PNG") and len(data) >= 26:
        bits = data[24] * _PNG_CHANNELS.get(data[25], 1)
        return height * (1 + math.ceil(width * bits / 8)) // _DEFLATE_MAX_RATIO
    if data.startswith(b"\xff\xd8"):
        sof, _ = _jpeg_layout(data)
        if sof in _JPEG_SOF_HUFFMAN:
            return width * height // _JPEG_PIXELS_PER_BIT // 8
    return 0


def _jpeg_layout(data: bytes) -> tuple[int | None, int | None]:
    """The frame marker (SOFn) of a JPEG and the offset of the end marker after its last scan.

    Walks the marker segments (skipping the entropy-coded data after each start of scan), so the
    end marker found is the one the decoder stops at, not one inside an EXIF thumbnail or a
    second picture appended after it (MPO). Either is None where the walk cannot go on.
    """
    sof = None
    position = 2  # past the start-of-image marker
    while position + 1 < len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xD9:
            return sof, position
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        if marker in _JPEG_SOF:
            sof = marker
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            found = _JPEG_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    return sof, None


def _jpeg_reads_past_its_data(data: bytes, decoded: ImageFile.ImageFile) -> bool:
    """Whether the decoder ran out of picture data and padded the rest (the file was cut short).

    libjpeg treats an end marker met mid-picture as "premature end of data segment": it warns
    and fills the rest with grey, and Pillow drops that warning, so a cut-short file with its
    end marker put back decodes without complaint. Measured on real files, nothing in Pillow's
    result tells the two apart. What does: slip filler bytes in before the end marker and decode
    again. A whole file never reads them (libjpeg skips bytes before a marker), so the pixels are
    the same; a cut-short one decodes them in place of the grey, so the pixels change.
    """
    _, end = _jpeg_layout(data)
    if end is None:
        return False
    while data[end - 1] == 0xFF:  # fill bytes belong to the marker: go in before them
        end -= 1
    probe_data = data[:end] + _JPEG_FILLER + data[end:]
    with Image.open(io.BytesIO(probe_data), formats=("JPEG",)) as probe:
        if decoded.size != probe.size:
            probe.draft(decoded.mode, decoded.size)
        probe.load()
        if probe.size != decoded.size or probe.mode != decoded.mode:
            return True
        return ImageChops.difference(probe, decoded).getbbox() is not None


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _looks_cut_short(data: bytes, err: Exception) -> bool:
    # PIL says "truncated" when the data runs out mid-picture (with LOAD_TRUNCATED_IMAGES off it
    # raises instead of padding). A JPEG whose end marker comes early is the exception: libjpeg
    # pads it without an error, which _jpeg_reads_past_its_data catches. libwebp only says it
    # "could not create decoder", but a WebP declares its length up front, so compare that with
    # what arrived.
    if isinstance(err, EOFError) or "truncated" in str(err).lower():
        return True
    return _is_webp(data) and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _reduction_factor(shorter_side: int, min_side: int) -> int:
    """Largest whole factor f with ceil(shorter_side / f) >= min_side (PIL rounds sizes up)."""
    if shorter_side <= min_side:
        return 1
    if min_side == 1:
        return shorter_side
    return (shorter_side - 1) // (min_side - 1)


def _draft(file: ImageFile.ImageFile, min_side: int) -> None:
    # The JPEG decoder can skip detail for 1/2, 1/4 or 1/8 scale, which is far cheaper than
    # decoding everything and shrinking afterwards. draft() picks the largest of those scales
    # that fits in the size asked for; asking for exactly w//s x h//s makes it pick s.
    factor = _reduction_factor(min(file.size), min_side)
    scale = next((s for s in _DRAFT_SCALES if s <= factor), 1)
    if scale > 1:
        width, height = file.size
        file.draft("RGB", (width // scale, height // scale))


def _reducible(image: Image.Image) -> Image.Image:
    if image.mode in _REDUCIBLE_MODES:
        return image
    # One byte a pixel either way; a palette or 16-bit picture needs its own conversion.
    return image.convert("L") if image.mode == "1" else _to_rgb(image)


def _reduce(image: Image.Image, min_side: int | None) -> Image.Image:
    # Whole-factor box averaging is exact and deterministic; it also finishes the job after a
    # JPEG draft, which stops at 1/8.
    factor = 1 if min_side is None else _reduction_factor(min(image.size), min_side)
    return _reducible(image).reduce(factor) if factor > 1 else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB, compositing transparency on white. Always returns a new image."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_grey(image)
    elif image.mode == "F":
        image = _float_to_grey(image)
    if image.has_transparency_data:
        # Flattening on white rather than dropping alpha: transparent areas are usually a blank
        # background, and dropping alpha can expose arbitrary colours stored under it.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    # PIL's own conversion clips at 255, turning almost every 16-bit pixel white. Keep the top
    # eight bits instead. Mode "I" is how PIL holds 16-bit data from some files; values outside
    # the 16-bit range are clipped.
    values = np.clip(np.asarray(image), 0, 65535) // 256
    return Image.fromarray(values.astype(np.uint8))


def _float_to_grey(image: Image.Image) -> Image.Image:
    # Float pictures (scientific TIFFs) usually hold 0..1; if they do not, assume 0..255 like PIL.
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    if values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(values, 0.0, 255.0).round().astype(np.uint8))

"""Peak memory of one decode through the image door, before and after bounded decoding.

Each row decodes one file once, in a fresh process, the way a caller does: ``full`` as the
store checks an upload (no bound), ``thumbnail`` at the thumbnail side (192) and ``embed`` at
the default backbone's resize side. The figure is the process's peak resident set size (VmHWM,
reset just before) minus what it held then; Pillow allocates outside tracemalloc's sight.
``before`` runs fsl_app/images.py as it is at another revision (default: main) on the same
files, which is how the thumbnail (no bound then) and embedding paths decoded before.

Files: a 20 KB 1-bit PNG of 9000 x 9000 (the hostile case; 10000 x 10000 is now over the
pixel limit), a flat RGBA PNG of 6000 x 6000, and skimage's astronaut as a 4000 x 3000 JPEG.

    python benchmarks/image_door.py [--before main]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
THUMBNAIL_SIDE = 192
EMBED_SIDE = 256

# Linux: writing 5 to clear_refs resets the peak (VmHWM) to the current resident size, so the
# peak read afterwards belongs to the decode alone, not to the imports before it.
_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from fsl_app.images import load_image
payload = open(sys.argv[2], "rb").read()
min_side = int(sys.argv[3]) or None
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
load_image(payload, min_side=min_side)
print(status("VmHWM:") - before)
"""


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _files() -> dict[str, bytes]:
    return {
        "PNG 1-bit 9000x9000": _encode(Image.new("1", (9000, 9000), 1), "PNG", optimize=True),
        "PNG RGBA 6000x6000": _encode(Image.new("RGBA", (6000, 6000), (9, 9, 9, 99)), "PNG"),
        "JPEG 4000x3000": _encode(
            Image.fromarray(data.astronaut()).resize((4000, 3000)), "JPEG", quality=90
        ),
    }


def _peak_mb(tree: Path, path: Path, min_side: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), str(path), str(min_side)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[-1]) / 1024  # /proc reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git revision to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        (old / "fsl_app").mkdir(parents=True)
        (old / "fsl_app" / "__init__.py").write_text("")
        source = subprocess.run(
            ["git", "show", f"{args.before}:fsl_app/images.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        (old / "fsl_app" / "images.py").write_bytes(source)
        print(f"{'file':<24}{'bytes':>10}  {'decode':<10}{'before MB':>10}{'after MB':>10}")
        for name, payload in _files().items():
            path = Path(tmp) / "file"
            path.write_bytes(payload)
            # The thumbnail path decoded at full size before (no bound was passed).
            rows = (
                ("full", 0, 0),
                ("thumbnail", 0, THUMBNAIL_SIDE),
                ("embed", EMBED_SIDE, EMBED_SIDE),
            )
            for decode, old_side, new_side in rows:
                before = _peak_mb(old, path, old_side)
                after = _peak_mb(ROOT, path, new_side)
                print(f"{name:<24}{len(payload):>10}  {decode:<10}{before:>10.0f}{after:>10.0f}")


if __name__ == "__main__":
    main()

"""The offline datasets: the photo categories every benchmark uses and the clip-art base set."""

from __future__ import annotations

from fsl_app.datasets import OPENCLIPART_HELD_OUT, load_dataset, openclipart


def test_clip_art_base_and_held_out_split_the_folders_without_overlap():
    base, held_out = openclipart(), openclipart(held_out=True)
    assert len(base) >= 60 and len(held_out) >= 20
    assert not set(base) & set(held_out)
    assert all(len(files) >= 10 for files in {**base, **held_out}.values())
    # Nothing the photos show is a base class: no birds, fruit or tools to meta-train on.
    for name in base:
        assert not any(name == p or name.startswith(p + "/") for p in OPENCLIPART_HELD_OUT), name
    assert "animals/birds" in held_out and "food/fruit" in held_out
    assert not any(name.startswith(("unsorted", "special")) for name in {**base, **held_out})


def test_photo_categories_leave_drawings_out_and_load_by_name():
    photos = load_dataset("tuxpaint-photos")
    assert "animals/birds" in photos.classes and len(photos.classes) >= 20
    assert not any("cartoon" in str(path) for path in photos.sources)
    small = load_dataset("openclipart-base", per_class=3, seed=1)
    assert len(small.sources) == 3 * len(small.classes)

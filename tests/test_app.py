"""The app, headless (Streamlit's AppTest): real photo bytes in, predictions on the page."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skimage_data
from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.slow

TIMEOUT = 180  # the first run loads the backbone
ROOT = Path(__file__).resolve().parent.parent


def upload(widget, paths):
    widget.set_value([(p.name, p.read_bytes(), "image/png") for p in paths])


def test_predicts_uploaded_photos(photos):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    at.text_input(key="name_0").input("bird")
    at.text_input(key="name_1").input("fruit")
    upload(at.file_uploader(key="examples_0"), photos["bird"][:5])
    upload(at.file_uploader(key="examples_1"), photos["fruit"][:5])
    # An apple among apple, apricot, cherry and strawberry examples (a banana is unlike
    # all of them, so the app may rightly call it "none of these").
    upload(at.file_uploader(key="queries"), [photos["bird"][10], photos["fruit"][6]])
    at.run()
    assert not at.exception
    assert [m.value for m in at.metric] == ["bird", "fruit"]


def test_an_image_unlike_every_class_is_none_of_these(photos):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.text_input(key="name_0").input("bird")
    at.text_input(key="name_1").input("fruit")
    upload(at.file_uploader(key="examples_0"), photos["bird"][:5])
    upload(at.file_uploader(key="examples_1"), photos["fruit"][:5])
    cameraman = io.BytesIO()
    Image.fromarray(skimage_data.camera()).save(cameraman, format="PNG")
    at.file_uploader(key="queries").set_value(
        [
            (photos["bird"][10].name, photos["bird"][10].read_bytes(), "image/png"),
            ("cameraman.png", cameraman.getvalue(), "image/png"),
        ]
    )
    at.run()
    assert not at.exception
    verdicts = [m.value for m in at.metric]
    assert verdicts[0] == "bird"
    assert verdicts[1].startswith("None of these (closest: ")


def test_guides_the_user_until_there_is_enough_to_predict(photos):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert "Add at least one example photo" in " ".join(i.value for i in at.info)
    at.text_input(key="name_1").input("class 1")
    at.run()
    assert "same name" in " ".join(i.value for i in at.info)


def test_a_corrupt_upload_is_reported_and_the_rest_predicted(photos):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    upload(at.file_uploader(key="examples_0"), photos["bird"][:3])
    upload(at.file_uploader(key="examples_1"), photos["flower"][:3])
    at.file_uploader(key="queries").set_value(
        [
            ("broken.jpg", b"\xff\xd8\xff\xe0 not really", "image/jpeg"),
            (photos["flower"][5].name, photos["flower"][5].read_bytes(), "image/png"),
        ]
    )
    at.run()
    assert not at.exception
    assert "broken.jpg" in " ".join(w.value for w in at.warning)
    assert [m.value for m in at.metric] == ["class 2"]


def test_model_page_shows_the_device_and_backbone():
    at = AppTest.from_file(str(ROOT / "pages" / "1_Model.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.metric[0].value == "CPU"
    assert "tf_efficientnet_lite0" in " ".join(t.value for t in at.text)

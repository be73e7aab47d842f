"""Embeddings are deterministic, cached by content, and never computed twice."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fsl_app.embeddings import Embedder, EmbeddingCache, default_cache_path, resolve_device


@pytest.fixture
def cache_file(tmp_path):
    return tmp_path / "embeddings.sqlite"


@pytest.fixture
def some_photos(photos):
    return photos["bird"][:4] + photos["fruit"][:4]


def test_embeddings_are_deterministic_and_in_input_order(backbone, some_photos):
    first = Embedder(backbone, device="cpu").embed(some_photos)
    second = Embedder(backbone, device="cpu").embed(list(reversed(some_photos)))
    assert first.embeddings.shape == (8, 1280)
    assert first.embeddings.dtype == np.float32
    np.testing.assert_allclose(second.embeddings[::-1], first.embeddings, rtol=1e-5, atol=1e-6)
    assert first.indices == list(range(8))
    assert len(set(first.ids)) == 8


def test_second_call_does_no_forward_pass(backbone, some_photos, cache_file):
    embedder = Embedder(backbone, device="cpu", cache=EmbeddingCache(cache_file))
    first = embedder.embed(some_photos)
    assert embedder.images_forwarded == 8
    again = embedder.embed(some_photos)
    assert embedder.images_forwarded == 8
    np.testing.assert_array_equal(again.embeddings, first.embeddings)


def test_only_new_images_are_embedded(backbone, photos, cache_file):
    embedder = Embedder(backbone, device="cpu", cache=EmbeddingCache(cache_file))
    embedder.embed(photos["bird"][:3])
    embedder.embed(photos["bird"][:3] + photos["fish"][:2])
    assert embedder.images_forwarded == 5


def test_same_bytes_twice_are_embedded_once(backbone, photos):
    embedder = Embedder(backbone, device="cpu")
    data = photos["flower"][0].read_bytes()
    result = embedder.embed([data, photos["flower"][0], data])
    assert embedder.images_forwarded == 1
    assert len(set(result.ids)) == 1
    np.testing.assert_array_equal(result.embeddings[0], result.embeddings[2])


def test_cache_survives_a_new_process(backbone, some_photos, cache_file):
    """A restart (a new Python process) finds every embedding and runs no forward pass."""
    Embedder(backbone, device="cpu", cache=EmbeddingCache(cache_file)).embed(some_photos)
    script = textwrap.dedent(
        f"""
        from fsl_app.backbones import load_backbone
        from fsl_app.embeddings import EmbeddingCache, Embedder
        cache = EmbeddingCache({str(cache_file)!r})
        embedder = Embedder(load_backbone(), device="cpu", cache=cache)
        result = embedder.embed({[str(p) for p in some_photos]!r})
        print(embedder.images_forwarded, len(result.indices))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["0", "8"]


def test_cached_embedding_equals_a_fresh_one(backbone, some_photos, cache_file):
    Embedder(backbone, device="cpu", cache=EmbeddingCache(cache_file)).embed(some_photos)
    cached = Embedder(backbone, device="cpu", cache=EmbeddingCache(cache_file)).embed(some_photos)
    fresh = Embedder(backbone, device="cpu").embed(some_photos)
    np.testing.assert_array_equal(cached.embeddings, fresh.embeddings)


def test_unreadable_files_are_reported_and_the_rest_embedded(backbone, photos, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(photos["bird"][0].read_bytes()[:200])
    missing = tmp_path / "missing.jpg"
    sources = [photos["bird"][1], broken, missing, photos["fruit"][0]]
    result = Embedder(backbone, device="cpu").embed(sources)
    assert result.indices == [0, 3]
    assert [i for i, _ in result.errors] == [1, 2]
    assert "broken.png" in result.errors[0][1] and "cut short" in result.errors[0][1]
    assert "missing.jpg" in result.errors[1][1]


def test_progress_reports_every_image(backbone, photos):
    calls = []
    Embedder(backbone, device="cpu", batch_size=3).embed(
        photos["fish"][:7], progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_batches_give_the_same_embeddings_as_one_at_a_time(backbone, some_photos):
    batched = Embedder(backbone, device="cpu", batch_size=8).embed(some_photos).embeddings
    single = Embedder(backbone, device="cpu", batch_size=1).embed(some_photos).embeddings
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(backbone):
    result = Embedder(backbone, device="cpu").embed([])
    assert result.embeddings.shape == (0, 1280)


def test_device_resolution_falls_back_to_cpu_and_refuses_a_missing_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(RuntimeError, match="GPU"):
            resolve_device("cuda")


def test_cache_keys_keep_backbones_apart(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    cache.put_many("a", {"h1": np.ones(3, dtype=np.float32)})
    cache.put_many("b", {"h1": np.zeros(3, dtype=np.float32)})
    assert cache.get_many("a", ["h1", "h2"])["h1"].tolist() == [1, 1, 1]
    assert cache.get_many("b", ["h1"])["h1"].tolist() == [0, 0, 0]
    assert cache.count() == 2 and cache.count("a") == 1


def test_default_cache_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_APP_CACHE", str(tmp_path / "x.sqlite"))
    assert default_cache_path() == tmp_path / "x.sqlite"

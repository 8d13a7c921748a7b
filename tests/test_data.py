"""text8 pipeline against a small archive built here (never the network), lesson 9."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from ddlab.text import data

TEXT = ("anarchism originated as a term of abuse first used against early working class "
        "radicals including the diggers of the english revolution ")
N_CHARS = 10_000


def _make_zip(tmp_path, text=None, member="text8"):
    text = text if text is not None else (TEXT * 200)[:N_CHARS]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, text)
    raw = buf.getvalue()
    path = tmp_path / "served" / "text8.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path, raw, text


def _kwargs(path, raw, **over):
    kw = dict(url=path.as_uri(), size=len(raw), md5=hashlib.md5(raw).hexdigest(), chars=N_CHARS)
    kw.update(over)
    return kw


def _no_network(url):
    raise urllib.error.URLError("no network in tests")


def test_download_check_split_and_memmap(tmp_path):
    path, raw, text = _make_zip(tmp_path)
    cache = tmp_path / "cache"
    out = data.text8_path(cache, **_kwargs(path, raw))
    ids = np.fromfile(out, dtype=np.uint8)
    # independent decoding: a = 0 ... z = 25, space = 26
    expected = np.array([26 if c == " " else ord(c) - ord("a") for c in text], dtype=np.uint8)
    np.testing.assert_array_equal(ids, expected)
    corpus = data.load_corpus("text8", root=cache, fallback=False, **_kwargs(path, raw))
    assert corpus.is_text8 and isinstance(corpus.train, np.memmap)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (9000, 500, 500)
    assert data.decode(corpus.valid) == text[9000:9500]
    assert data.decode(corpus.test) == text[9500:]
    assert sorted(p.name for p in cache.iterdir()) == ["text8.u8", "text8.u8.sha256", "text8.zip"]


def test_cached_file_is_reused_without_network(tmp_path):
    path, raw, _ = _make_zip(tmp_path)
    cache = tmp_path / "cache"
    first = data.text8_path(cache, **_kwargs(path, raw))
    again = data.text8_path(cache, opener=_no_network, **_kwargs(path, raw))
    assert again == first
    (cache / "text8.u8").unlink()          # only the zip left: re-extracted, still no network
    assert data.text8_path(cache, opener=_no_network, **_kwargs(path, raw)).stat().st_size == N_CHARS


def test_wrong_checksum_caches_nothing(tmp_path):
    path, raw, _ = _make_zip(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="MD5") as err:
        data.text8_path(cache, **_kwargs(path, raw, md5="0" * 32))
    assert "by hand" in str(err.value)
    assert list(cache.iterdir()) == []      # no half or wrong file, no temporary left behind


def test_truncated_download_caches_nothing(tmp_path):
    path, raw, _ = _make_zip(tmp_path)
    good = _kwargs(path, raw)
    path.write_bytes(raw[: len(raw) // 2])  # the server now sends half the file
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="bytes"):
        data.text8_path(cache, **good)
    assert list(cache.iterdir()) == []


def test_truncated_cached_zip_is_refused(tmp_path):
    path, raw, _ = _make_zip(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "text8.zip").write_bytes(raw[:100])
    with pytest.raises(data.DataError, match="truncated"):
        data.text8_path(cache, opener=_no_network, **_kwargs(path, raw))


def test_no_network_error_and_loud_fallback(tmp_path, capsys):
    path, raw, _ = _make_zip(tmp_path)
    kw = _kwargs(path, raw)
    with pytest.raises(data.DataError, match="could not download.*by hand"):
        data.text8_path(tmp_path / "c1", opener=_no_network, **kw)
    with pytest.warns(UserWarning, match="FALLBACK"):
        corpus = data.load_corpus("text8", root=tmp_path / "c2", opener=_no_network, **kw)
    assert not corpus.is_text8 and "fallback" in corpus.name
    assert "NOT text8" in capsys.readouterr().err
    total = len(corpus.train) + len(corpus.valid) + len(corpus.test)
    assert total == len(data.fallback_text()) > 100_000
    assert abs(len(corpus.train) / total - 0.9) < 1e-4


def test_text8_normalize_examples():
    assert data.text8_normalize("Hello, World!  42 cafe\u0301\n") == "hello world four two cafe"
    assert data.text8_normalize("  --  ") == ""
    assert data.text8_normalize("x9y") == "x nine y"
    with pytest.raises(ValueError, match="str"):
        data.text8_normalize(b"bytes")


@given(st.text(max_size=200))
def test_text8_normalize_gives_text8_format(s):
    out = data.text8_normalize(s)
    assert set(out) <= set(data.ALPHABET)
    assert "  " not in out and out == out.strip()
    assert data.text8_normalize(out) == out          # idempotent
    assert data.decode(data.encode(out)) == out      # and encodable


def test_encode_rejects_non_text8():
    with pytest.raises(ValueError, match="'H'.*text8_normalize"):
        data.encode("Hi")
    assert data.decode([0, 25, 26, data.MASK_ID]) == "az _"


def test_crops_are_contiguous_and_resumable():
    arr = np.arange(1000) % 27
    s = data.CropSampler(arr.astype(np.uint8), length=16, batch=8, seed=3)
    x = s.next()
    assert x.shape == (8, 16) and x.dtype == torch.int64
    for row in x.numpy():                         # each row is arr[k : k + 16] for its first k
        starts = np.nonzero(arr[:-15] == row[0])[0]
        assert any((arr[k:k + 16] == row).all() for k in starts)
    state = s.state_dict()
    a = s.next()
    s.load_state_dict(state)
    assert torch.equal(a, s.next())


def test_eval_chunks_fixed_and_nonoverlapping():
    arr = (np.arange(103) % 27).astype(np.uint8)
    c = data.eval_chunks(arr, 10)
    assert c.shape == (10, 10)
    assert torch.equal(c.reshape(-1), torch.from_numpy(arr[:100].astype(np.int64)))
    assert data.eval_chunks(arr, 10, max_chunks=3).shape == (3, 10)
    with pytest.raises(ValueError, match="fewer than one chunk"):
        data.eval_chunks(arr, 200)

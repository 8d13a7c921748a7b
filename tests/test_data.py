"""text8 pipeline against a small archive built here (never the network), lesson 9."""

from __future__ import annotations

import hashlib
import io
import platform
import sysconfig
import urllib.error
import warnings
import zipfile
from pathlib import Path

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


def _small_offline(monkeypatch, text=(TEXT * 50).strip()):
    """Stand in a small text for the offline corpus (the real one takes ~10 s to build) and make
    the once-per-process warning fresh; returns the list of calls to the builder."""
    calls = []

    def build():
        calls.append(1)
        return text
    monkeypatch.setattr(data, "offline_text", build)
    monkeypatch.setattr(data, "_fallback_warned", False)
    return calls


def test_no_network_falls_back_with_one_short_warning_per_process(tmp_path, monkeypatch, capsys):
    path, raw, _ = _make_zip(tmp_path)
    kw = _kwargs(path, raw)
    with pytest.raises(data.DataError, match="could not download.*by hand"):
        data.text8_path(tmp_path / "c1", opener=_no_network, **kw)
    with pytest.raises(data.DataError, match="could not download"):
        data.load_corpus("text8", root=tmp_path / "c1", fallback=False, opener=_no_network, **kw)
    _small_offline(monkeypatch)
    with pytest.warns(data.FallbackWarning) as record:
        corpus = data.load_corpus("text8", root=tmp_path / "c2", opener=_no_network, **kw)
    assert len(record) == 1 and issubclass(data.FallbackWarning, UserWarning)
    message = str(record[0].message)
    total = len(corpus.train) + len(corpus.valid) + len(corpus.test)
    assert len(message.splitlines()) <= 3
    assert "could not download" in message and "no network in tests" in message
    assert f"{total:,} characters" in message and "NOT text8" in message
    assert "fallback=False" in message and record[0].filename == __file__   # at the caller
    assert capsys.readouterr().err == ""                 # no separate banner
    assert not corpus.is_text8 and corpus.name.startswith("fallback (Python 3.")
    assert total == len((TEXT * 50).strip()) and abs(len(corpus.train) / total - 0.9) < 1e-3
    with warnings.catch_warnings(record=True) as again:  # a lesson that loads twice: said once
        warnings.simplefilter("always")
        data.load_corpus("text8", root=tmp_path / "c3", opener=_no_network, **kw)
    assert [w for w in again if issubclass(w.category, data.FallbackWarning)] == []


def test_text8_stays_first_choice_when_present(tmp_path, monkeypatch):
    path, raw, text = _make_zip(tmp_path)
    calls = _small_offline(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.FallbackWarning)
        corpus = data.load_corpus("text8", root=tmp_path / "cache", **_kwargs(path, raw))
    assert corpus.is_text8 and corpus.name == "text8" and calls == []
    assert data.decode(corpus.train[:20]) == text[:20]


def test_offline_corpus_is_cached_beside_its_hash_and_reused(tmp_path, monkeypatch):
    calls = _small_offline(monkeypatch)
    cache = tmp_path / "cache"
    first = data.load_corpus("fallback", root=cache)
    out = data.offline_path(cache)
    assert platform.python_version() in out.name and out.suffix == ".u8"
    assert sorted(p.name for p in cache.iterdir()) == [out.name, out.name + ".sha256"]
    assert out.with_name(out.name + ".sha256").read_text().split()[0] == \
        hashlib.sha256(out.read_bytes()).hexdigest()
    assert data.decode(np.fromfile(out, dtype=np.uint8)) == (TEXT * 50).strip() and calls == [1]

    def no_rebuild():
        raise AssertionError("the cache was not used")
    monkeypatch.setattr(data, "offline_text", no_rebuild)
    again = data.load_corpus("fallback", root=cache)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(again.split(split), first.split(split))
    assert again.name == first.name and "docstrings and comments" in again.name
    monkeypatch.setenv("DDLAB_DATA", str(cache))             # the default folder: data_dir()
    assert len(data.load_corpus("fallback").train) == len(first.train)


@pytest.mark.parametrize("damage", ["same size, other bytes", "truncated", "empty", "no hash"])
def test_a_damaged_offline_cache_is_rebuilt(damage, tmp_path, monkeypatch):
    calls = _small_offline(monkeypatch)
    cache = tmp_path / "cache"
    data.load_corpus("fallback", root=cache)
    out = data.offline_path(cache)
    good = out.read_bytes()
    if damage == "same size, other bytes":
        out.write_bytes(bytes(len(good)))
    elif damage == "truncated":
        out.write_bytes(good[:-7])
    elif damage == "empty":
        out.write_bytes(b"")
        out.with_name(out.name + ".sha256").write_text(hashlib.sha256(b"").hexdigest())
    else:
        out.with_name(out.name + ".sha256").unlink()
    corpus = data.load_corpus("fallback", root=cache)
    assert calls == [1, 1] and out.read_bytes() == good
    assert data.decode(np.concatenate([corpus.train, corpus.valid, corpus.test])) == \
        (TEXT * 50).strip()


def test_an_unusable_folder_still_gives_the_offline_corpus(tmp_path, monkeypatch):
    _small_offline(monkeypatch)
    f = tmp_path / "file"
    f.write_text("x")
    corpus = data.load_corpus("fallback", root=f / "below")
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == len((TEXT * 50).strip())


def test_pydoc_corpus_is_the_small_first_part_of_the_offline_text(tmp_path):
    small = data.pydoc_text()
    assert data.fallback_text() == small and 100_000 < len(small) < 1_000_000
    corpus = data.load_corpus("pydoc")
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == len(small)
    tree = tmp_path / "lib"
    tree.mkdir()
    (tree / "one.py").write_text('"""Only a docstring."""\n')
    assert data.offline_text(tree) == small + " only a docstring"


# ------------------------------------------------------------------ the offline corpus builder
KEPT = {
    "alpha.py": (
        "#!/usr/bin/env python3\n"
        "# -*- coding: utf-8 -*-\n"
        '"""Alpha module, the first docstring."""\n'
        "# ----------------------------------\n"
        "# A comment about apples,\n"
        "# continued on a second line.\n"
        "#\n"
        "# A second paragraph: 42.\n"
        "x = 1  # an inline note\n"
        "\n"
        "def f():\n"
        '    """Function docstring.\n'
        "\n"
        "    >>> f()\n"
        "    doctest output\n"
        "\n"
        '    After the example, Caf\u00e9."""\n'
        "    if x:\n"
        "        pass\n"
        "    else:\n"
        "        class Inner:\n"
        '            """Nested class docstring."""\n'
        "    try:\n"
        "        pass\n"
        "    except ValueError:\n"
        "        def handler():\n"
        '            """Handler function."""\n'
        "    s = '# not a comment'\n"),
    "codec.py": ("table = (\n"
                 "    '\\x41',  #  0x41 -> LATIN CAPITAL LETTER A\n"
                 "    0x42,   #  LATIN CAPITAL LETTER B\n"
                 ")\n"),
    "gamma.py": ("# Permission to use, copy, modify and distribute this software is granted.\n"
                 "# THE SOFTWARE IS PROVIDED AS IS.\n"
                 "#\n"
                 "# see above\n"
                 '"""Gamma."""\n'),
    "pkg/__init__.py": '"""Package init."""\n',
    "pkg/beta.py": ("# Permission to use, copy, modify and distribute this software is granted.\n"
                    "# THE SOFTWARE IS PROVIDED AS IS.\n"
                    "#\n"
                    "# see above\n"
                    "async def g():\n"
                    '    """Beta coroutine."""\n'),
}
EXPECTED = ("alpha module the first docstring a comment about apples continued on a second line "
            "a second paragraph four two an inline note function docstring after the example "
            "cafe nested class docstring handler function "
            "permission to use copy modify and distribute this software is granted the software "
            "is provided as is see above gamma "
            "package init "
            "see above beta coroutine")
EXCLUDED = ["test/test_x.py", "tests/helper.py", "idlelib/idle_test/htest.py",
            "lib2to3/tests/data/py2_only.py", "test_top.py", "site-packages/thirdparty.py",
            "dist-packages/thirdparty.py", "_sysconfigdata__linux_x86_64-linux-gnu.py",
            "config-3.11-x86_64-linux-gnu/python-config.py", "__pycache__/cached.py",
            "sitecustomize.py"]


def _fake_stdlib(root, reverse=False):
    """A tiny standard library: the files KEPT, the EXCLUDED ones (each would add the word
    'excluded'), one that does not parse, one that does not decode, a link and a text file."""
    files = {**KEPT, **{rel: '"""Excluded marker."""\n# excluded\n' for rel in EXCLUDED}}
    files["broken.py"] = 'def (:\n    """Unparsable marker."""\n'
    files["notes.txt"] = "# excluded: not a Python file\n"
    for rel in sorted(files, reverse=reverse):          # creation order must not matter
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(files[rel], encoding="utf-8")
    (root / "bad_bytes.py").write_bytes(b'"""Undecodable caf\xe9 marker."""\n')
    (root / "linked.py").symlink_to(root / "alpha.py")
    return root


def test_stdlib_prose_keeps_docstrings_and_comments_and_skips_the_rest(tmp_path):
    prose = data.stdlib_prose(_fake_stdlib(tmp_path / "lib"))
    assert prose.text == EXPECTED
    assert prose.files == ("alpha.py", "gamma.py", "pkg/__init__.py", "pkg/beta.py")
    assert prose.unparsable == ("bad_bytes.py", "broken.py")
    firsts = ["alpha module", "permission to use", "package init", "see above beta"]
    assert [prose.text[i:i + len(w)] for i, w in zip(prose.starts, firsts)] == firsts
    with pytest.raises(ValueError, match="stdlib must be a folder"):
        data.stdlib_prose(tmp_path / "lib" / "alpha.py")


def _copy_one(dest, src):
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(src.read_bytes())
    return dest.parent


def test_offline_text_is_byte_identical_across_builds(tmp_path):
    one = data.offline_text(_fake_stdlib(tmp_path / "a"))
    two = data.offline_text(_fake_stdlib(tmp_path / "b", reverse=True))
    assert one.encode() == two.encode()
    assert one.endswith(" " + EXPECTED) and one.startswith(data.pydoc_text()[:1000])


def test_real_stdlib_files_give_text8_format_prose(tmp_path):
    """A few real modules, copied: the text is text8 format and a codec's table is not in it."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lib = tmp_path / "lib"
    for rel in ["textwrap.py", "json/__init__.py", "encodings/cp1252.py"]:
        _copy_one(lib / rel, stdlib / rel)
    prose = data.stdlib_prose(lib)
    assert set(prose.text) <= set(data.ALPHABET) and "  " not in prose.text
    assert prose.text == prose.text.strip() and len(prose.text) > 5_000
    assert "latin capital letter" not in prose.text and "text wrapping" in prose.text
    assert prose.files == ("encodings/cp1252.py", "json/__init__.py", "textwrap.py")
    data.encode(prose.text)


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

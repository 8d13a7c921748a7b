"""text8: download, check, cache, split, encode, crop (lesson 9).

text8 is the first 10^8 characters of a cleaned English Wikipedia dump (Matt Mahoney): only the 26
lowercase letters and single spaces. The literature on discrete diffusion (D3PM, SEDD, MDLM) splits
it 90M / 5M / 5M characters into train / valid / test and reports bits per character.

Pipeline::

    path = text8_path()             # download once (size + MD5), cache (size + SHA-256), atomically
    corpus = load_corpus("text8")   # three memory-mapped uint8 splits of token ids
    sampler = CropSampler(corpus.train, length=256, batch=32, seed=0)
    x0 = sampler.next()             # (32, 256) int64: random crops for training
    chunks = eval_chunks(corpus.test, 256)   # fixed, non-overlapping chunks for evaluation

Token ids: 'a'..'z' are 0..25, the space is 26, and the absorbing process adds MASK = 27 (the last
state, docs/design.md). Without text8 (no network), ``load_corpus("text8", fallback=True)`` uses the
Python documentation that ships with every Python (``pydoc_data.topics``), normalised to the text8
alphabet, and says so loudly: numbers from it are *not* text8 numbers.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import unicodedata
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_ZIP_BYTES = 31_344_016
TEXT8_ZIP_MD5 = "f26f94c5209bc6159618bad4a559ff81"
TEXT8_CHARS = 100_000_000
# D3PM / MDLM split: first 90M characters train, next 5M valid, last 5M test.
SPLIT_FRACTIONS = {"train": (0.0, 0.9), "valid": (0.9, 0.95), "test": (0.95, 1.0)}

ALPHABET = "abcdefghijklmnopqrstuvwxyz "      # id = position; space is 26
VOCAB_SIZE = len(ALPHABET)                    # 27 characters
MASK_ID = VOCAB_SIZE                          # 27: the absorbing state, last index of n = 28
MASK_CHAR = "_"

_LUT = np.full(256, 255, dtype=np.uint8)      # byte -> token id (255 = not in the alphabet)
for _i, _c in enumerate(ALPHABET):
    _LUT[ord(_c)] = _i
_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DataError(RuntimeError):
    """The data could not be obtained or failed a check; the message says what to do."""


# ------------------------------------------------------------------------------- text8 format
def text8_normalize(text: str) -> str:
    """Turn any text into text8 format: lowercase a-z and single spaces (lesson 9).

    Accents are dropped (``é`` -> ``e``), every digit becomes its English word between spaces
    (``"42"`` -> ``"four two"``, as in Mahoney's text8 script), and every other character becomes a
    space; runs of spaces collapse to one and the ends are stripped.
    """
    if not isinstance(text, str):
        raise ValueError(f"text8_normalize needs a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[0-9]", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    text = re.sub(r"[^a-z]+", " ", text)
    return text.strip()


def encode(text: str) -> np.ndarray:
    """text8-format text -> uint8 token ids (``'a'`` = 0 ... ``' '`` = 26)."""
    raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    ids = _LUT[raw]
    if (ids == 255).any():
        pos = int(np.argmax(ids == 255))
        raise ValueError(f"character {text[pos]!r} at position {pos} is not in the text8 alphabet "
                         f"(a-z and space); pass the text through text8_normalize first")
    return ids


def decode(ids) -> str | list[str]:
    """Token ids -> text. MASK prints as ``_``. A 2-d input gives one string per row."""
    arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids).astype(np.int64)
    if arr.ndim == 2:
        return [decode(row) for row in arr]
    if arr.size and (arr.min() < 0 or arr.max() > MASK_ID):
        raise ValueError(f"token ids must lie in 0..{MASK_ID}, got {arr.min()}..{arr.max()}")
    table = np.array(list(ALPHABET + MASK_CHAR))
    return "".join(table[arr])


# ------------------------------------------------------------------------------- download
def data_dir() -> Path:
    """Where data is cached: ``$DDLAB_DATA``, else ``$XDG_CACHE_HOME/ddlab``, else ``~/.cache/ddlab``."""
    env = os.environ.get("DDLAB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ddlab"


def _file_hash(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 4 MiB blocks (the archive's MD5, the cache's SHA-256)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _md5(path: Path) -> str:
    return _file_hash(path, "md5")


def _manual_hint(dest: Path, url: str, size: int, md5: str) -> str:
    return (f"To place the file by hand: download {url} on a machine with network access, check "
            f"that it has {size:,} bytes and MD5 {md5}, and copy it to {dest} (or set $DDLAB_DATA "
            f"to the folder that holds it). Offline, load_corpus('text8', fallback=True) uses a "
            f"small corpus that ships with Python instead.")


def _check_file(path: Path, size: int, md5: str, url: str, dest: Path) -> None:
    got = path.stat().st_size
    if got != size:
        raise DataError(f"{path} has {got:,} bytes, expected {size:,} (a truncated or different "
                        f"file). {_manual_hint(dest, url, size, md5)}")
    got_md5 = _md5(path)
    if got_md5 != md5:
        raise DataError(f"{path} has MD5 {got_md5}, expected {md5} (a corrupted or different "
                        f"file). {_manual_hint(dest, url, size, md5)}")


def download(url: str, dest, size: int, md5: str, opener=None) -> Path:
    """Fetch ``url`` to ``dest`` atomically, checking its byte size and MD5.

    The bytes go to a temporary file beside ``dest`` and are moved into place with ``os.replace``
    only after both checks pass, so a half-written or wrong file is never left at ``dest``.
    ``opener(url)`` returns a file-like response (default ``urllib.request.urlopen``; tests pass
    their own). An existing ``dest`` is checked and reused without touching the network.
    """
    dest = Path(dest)
    if dest.exists():
        _check_file(dest, size, md5, url, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = opener or (lambda u: urllib.request.urlopen(u, timeout=60))
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        try:
            with os.fdopen(fd, "wb") as out, opener(url) as resp:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
        except OSError as err:      # URLError, timeouts, connection resets are OSErrors
            raise DataError(f"could not download {url}: {err}. "
                            f"{_manual_hint(dest, url, size, md5)}") from err
        _check_file(Path(tmp), size, md5, url, dest)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def _sha256(path: Path) -> str:
    return _file_hash(path, "sha256")


def _cached_ok(out: Path, chars: int) -> bool:
    """Whether ``out`` is the encoded text8 written by :func:`text8_path`: right size, and the
    SHA-256 of its bytes equals the one stored beside it when it was built. The size alone would
    accept any file of 10^8 bytes (one of zeros was once reported as text8); the whole file is
    hashed (~0.3 s for 100 MB, once per load), so that no corruption anywhere goes unseen."""
    digest = out.with_name(out.name + ".sha256")
    try:
        if out.stat().st_size != chars:
            return False
        return digest.read_text().split()[0] == _sha256(out)
    except (OSError, IndexError):
        return False


def _write_atomic(root: Path, dest: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=root)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def text8_path(root=None, *, url: str = TEXT8_URL, size: int = TEXT8_ZIP_BYTES,
               md5: str = TEXT8_ZIP_MD5, chars: int = TEXT8_CHARS, opener=None) -> Path:
    """Path of the encoded text8 file (``text8.u8``: one uint8 token id per character).

    Downloads ``text8.zip`` into ``root`` (default :func:`data_dir`) if it is not there, checks
    its size and MD5, unzips it and encodes it, each step written atomically, and stores the
    SHA-256 of the encoded bytes in ``text8.u8.sha256``. A cached ``text8.u8`` is used only if its
    size and that hash match; otherwise it is rebuilt from the (MD5-checked) archive. A data
    folder that cannot be created or written raises DataError (so that ``load_corpus`` can fall
    back), never a bare OSError. The parameters exist so that tests can point this at a small
    archive of their own.
    """
    root = Path(root) if root is not None else data_dir()
    out = root / "text8.u8"
    if _cached_ok(out, chars):
        return out
    try:
        if root.exists() and not root.is_dir():
            raise DataError(f"the data folder {root} is a file, not a folder; set $DDLAB_DATA "
                            f"to a folder")
        zpath = download(url, root / "text8.zip", size, md5, opener)
        with zipfile.ZipFile(zpath) as zf:
            names = zf.namelist()
            if names != ["text8"]:
                raise DataError(f"{zpath} should hold one member 'text8', holds {names}")
            raw = zf.read("text8")
        if len(raw) != chars:
            raise DataError(f"text8 inside {zpath} has {len(raw):,} characters, expected "
                            f"{chars:,}")
        payload = encode(raw.decode("ascii")).tobytes()
        _write_atomic(root, out, payload)
        _write_atomic(root, out.with_name(out.name + ".sha256"),
                      (hashlib.sha256(payload).hexdigest() + "  text8.u8\n").encode())
    except OSError as err:      # read-only, full, or a path through a file: not a usable folder
        raise DataError(f"the data folder {root} is not usable ({err.strerror or err}); set "
                        f"$DDLAB_DATA to a writable folder") from None
    return out


# ------------------------------------------------------------------------------- corpora
@dataclass
class Corpus:
    """Three splits of token ids (uint8 arrays, memory-mapped for text8) and where they came from."""
    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    is_text8: bool

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {name!r}")
        return getattr(self, name)

    def __repr__(self):
        return (f"Corpus({self.name!r}, train={len(self.train):,}, valid={len(self.valid):,}, "
                f"test={len(self.test):,} characters)")


def _split(ids: np.ndarray, name: str, is_text8: bool) -> Corpus:
    N = len(ids)
    cut = {k: (int(round(a * N)), int(round(b * N))) for k, (a, b) in SPLIT_FRACTIONS.items()}
    return Corpus(name, *(ids[slice(*cut[k])] for k in ("train", "valid", "test")), is_text8)


def fallback_text() -> str:
    """The offline corpus: Python's own pydoc topic texts, normalised to text8 format (~450K chars)."""
    from pydoc_data.topics import topics
    return text8_normalize(" ".join(topics[k] for k in sorted(topics)))


def load_corpus(name: str = "text8", *, fallback: bool = True, root=None, **text8_kwargs) -> Corpus:
    """Load a corpus split 90/5/5 (lesson 9).

    ``name`` is ``"text8"`` (downloaded and cached; memory-mapped), ``"fallback"`` (the pydoc
    corpus) or the path of a text file already in text8 format (e.g. the corpus that
    benchmarks/make_doc_corpus.py writes). With ``fallback=True`` a text8 that cannot be obtained is
    replaced by the pydoc corpus with a loud warning; with ``fallback=False`` the error is raised.
    """
    if name == "text8":
        try:
            path = text8_path(root, **text8_kwargs)
        except DataError as err:
            if not fallback:
                raise
            # Loud on purpose: a banner on stderr (seen in notebooks and logs even where warnings
            # are filtered) and a warning (catchable by callers and tests).
            print("\n" + "!" * 78 + "\n!! text8 is NOT available, so this run uses the FALLBACK "
                  "corpus (Python's pydoc\n!! topics, ~450K characters). Its bits/char are NOT "
                  "text8 numbers.\n!! Reason: " + " ".join(str(err).split()) + "\n" + "!" * 78,
                  file=sys.stderr)
            warnings.warn("text8 is not available: using the FALLBACK corpus (pydoc topics); "
                          "its numbers are NOT text8 numbers", stacklevel=2)
            return load_corpus("fallback")
        return _split(np.memmap(path, dtype=np.uint8, mode="r"), "text8", True)
    if name == "fallback":
        return _split(encode(fallback_text()), "fallback (pydoc topics)", False)
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"corpus must be 'text8', 'fallback' or the path of a text8-format text "
                         f"file; {name!r} is none of these")
    return _split(encode(path.read_text(encoding="ascii").strip()), path.name, False)


# ------------------------------------------------------------------------------- batches
class CropSampler:
    """Random contiguous crops of ``length`` tokens from one split, ``batch`` at a time.

    It owns its torch.Generator, whose state is saved in checkpoints (``state_dict``) so that a
    resumed run draws exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, data: np.ndarray, length: int, batch: int, seed: int = 0):
        if len(data) < length + 1:
            raise ValueError(f"the split has {len(data)} tokens, fewer than one crop of {length}")
        # Checked once here, so that the training steps can skip their per-batch value checks.
        top = int(np.max(data))
        if top >= VOCAB_SIZE:
            raise ValueError(f"the split holds token id {top}; text8 ids lie in 0..{VOCAB_SIZE - 1} "
                             f"(encode text with ddlab.text.data.encode)")
        self.data, self.length, self.batch = data, int(length), int(batch)
        self.gen = torch.Generator().manual_seed(int(seed))

    def next(self) -> torch.Tensor:
        starts = torch.randint(0, len(self.data) - self.length + 1, (self.batch,), generator=self.gen)
        rows = [np.asarray(self.data[s:s + self.length]) for s in starts.tolist()]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def eval_chunks(data: np.ndarray, length: int, max_chunks: int | None = None) -> torch.Tensor:
    """The split cut into consecutive non-overlapping chunks of ``length``: (N, length) int64.

    Fixed (no randomness), so every evaluation sees the same text. ``max_chunks`` keeps the first
    ones only (a quick estimate; the full test split of text8 has 19,531 chunks of 256).
    """
    n = len(data) // length
    if max_chunks is not None:
        n = min(n, int(max_chunks))
    if n < 1:
        raise ValueError(f"the split has {len(data)} tokens, fewer than one chunk of {length}")
    return torch.from_numpy(np.asarray(data[: n * length]).astype(np.int64).reshape(n, length))


__all__ = ["TEXT8_URL", "TEXT8_ZIP_BYTES", "TEXT8_ZIP_MD5", "TEXT8_CHARS", "SPLIT_FRACTIONS",
           "ALPHABET", "VOCAB_SIZE", "MASK_ID", "MASK_CHAR", "DataError", "text8_normalize",
           "encode", "decode", "data_dir", "download", "text8_path", "Corpus", "load_corpus",
           "fallback_text", "CropSampler", "eval_chunks"]

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
offline corpus, English that ships with every Python: the pydoc topics and the docstrings and
comments of the standard library (a few million characters, built once and cached), normalised to
the text8 alphabet. It says so in one FallbackWarning per process: numbers from it are *not* text8
numbers.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import platform
import re
import sys
import sysconfig
import tempfile
import tokenize
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
    if not text.isascii():      # ASCII has no accents to drop: skip the per-character pass
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.lower()
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
            f"corpus that ships with Python instead (its docs, docstrings and comments).")


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


def _cached_ok(out: Path, chars: int | None = None) -> bool:
    """Whether ``out`` is the encoded text8 written by :func:`text8_path` (or the offline corpus,
    whose size is not known in advance: ``chars=None``): right size, and the SHA-256 of its bytes
    equals the one stored beside it when it was built. The size alone would accept any file of
    10^8 bytes (one of zeros was once reported as text8); the whole file is hashed (~0.3 s for
    100 MB, once per load), so that no corruption anywhere goes unseen."""
    digest = out.with_name(out.name + ".sha256")
    try:
        size = out.stat().st_size
        if size == 0 or (chars is not None and size != chars):
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


# ------------------------------------------------------------------------------- offline corpus
class FallbackWarning(UserWarning):
    """``load_corpus("text8")`` could not get text8 and used the offline corpus (lesson 9)."""


# Bump when the rules of stdlib_prose change, so that caches built by older rules are not reused.
OFFLINE_FORMAT = 1
# Test suites, third-party packages, compiled extensions and caches are not the standard library's
# prose; config-3.X-<platform> holds the build's Makefile and helper scripts (machine-specific).
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
              "lib-dynload"}
_SKIP_DIR_PREFIXES = ("config-",)
# _sysconfigdata_* records this build's compiler flags and paths; the customize hooks are local.
_SKIP_FILE_PREFIXES = ("test_", "_sysconfigdata")
_SKIP_FILES = {"sitecustomize.py", "usercustomize.py"}
_CODING_LINE = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+")    # PEP 263
_TABLE_ROW = re.compile(r"^#\s*0x[0-9A-Fa-f]+\s*(->|=>)")             # '\x41'  # 0x41 -> ...
# Paragraphs at least this long (normalised) are kept once only: long identical paragraphs are
# copies (licences, repeated docstrings); short ones ("return the result") recur in any prose.
_DEDUP_MIN_CHARS = 40
_OFFLINE_MEMO: dict[str, str] = {}
_fallback_warned = False            # the FallbackWarning is given once per process


def pydoc_text() -> str:
    """Python's own pydoc topic texts, normalised to text8 format (~390K characters, lesson 9).

    Small and quick (~0.05 s): the tests cut their tiny training corpora from it. The fallback
    corpus (:func:`offline_text`) starts with it.
    """
    from pydoc_data.topics import topics
    return text8_normalize(" ".join(topics[k] for k in sorted(topics)))


def fallback_text() -> str:
    """The former offline corpus, the pydoc topics alone: same as :func:`pydoc_text` (lesson 9).

    Kept for the callers that cut small corpora from it; ``load_corpus`` now falls back to the
    larger :func:`offline_text`.
    """
    return pydoc_text()


def _drop_doctests(doc: str) -> str:
    # A doctest example runs from its ">>>" line to the next blank line (doctest's own rule):
    # code and its printed output, not prose.
    kept, in_example = [], False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_example = True
        elif not stripped:
            in_example = False
        if not in_example:
            kept.append(line)
    return "\n".join(kept)


def _docstrings(tree: ast.Module) -> list[tuple[int, str]]:
    found, stack = [], [tree]
    while stack:
        # Only statements can hold a def or a class, so walking the statement lists finds every
        # docstring at a fraction of ast.walk's cost (it visits every expression node too).
        node = stack.pop()
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                stack.extend(children)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                for para in re.split(r"\n[ \t]*\n", _drop_doctests(doc)):
                    found.append((node.body[0].lineno, para))
    return found


def _comments(src: str) -> list[tuple[int, str]]:
    """Comment paragraphs with their first line: consecutive whole-line comments form one
    paragraph until an empty or punctuation-only comment line (``#``, ``# ----``); a comment after
    code on its line is a paragraph of its own."""
    found, block, start, last_row = [], [], 0, -2
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row, text = tok.start[0], tok.string
        if row <= 2 and (text.startswith("#!") or _CODING_LINE.match(text)):
            continue
        body = text.lstrip("#").strip()
        whole_line = tok.line.lstrip().startswith("#")
        # The codec modules' tables: a hex code and an arrow, or a Unicode character name in
        # capitals after the table entry. Tens of thousands of rows, none of them prose.
        table = _TABLE_ROW.match(text) or (not whole_line and body.isupper())
        ends_block = not whole_line or row != last_row + 1 or not re.search(r"[A-Za-z0-9]", body)
        if block and ends_block:
            found.append((start, "\n".join(block)))
            block = []
        if table or not re.search(r"[A-Za-z0-9]", body):
            last_row = row
            continue
        if whole_line:
            if not block:
                start = row
            block.append(body)
            last_row = row
        else:
            found.append((row, body))
            last_row = -2
    if block:
        found.append((start, "\n".join(block)))
    return found


@dataclass(frozen=True)
class StdlibProse:
    """What :func:`stdlib_prose` extracted: the text and which files gave it (lesson 9)."""
    text: str                     # text8 format
    files: tuple[str, ...]        # relative paths (sorted) of the files that contributed text
    starts: tuple[int, ...]       # where each of those files' text begins in ``text``
    unparsable: tuple[str, ...]   # relative paths of the files that failed to decode or parse


def _stdlib_files(root: Path) -> list[str]:
    rels = []
    for folder, dirs, files in os.walk(root):     # os.walk does not follow linked folders
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(_SKIP_DIR_PREFIXES)]
        for f in files:
            path = Path(folder) / f
            if (f.endswith(".py") and f not in _SKIP_FILES
                    and not f.startswith(_SKIP_FILE_PREFIXES) and not path.is_symlink()):
                rels.append(path.relative_to(root).as_posix())
    return sorted(rels)


def stdlib_prose(stdlib=None) -> StdlibProse:
    """The docstrings and comments of the standard library's pure-Python modules (lesson 9).

    Reads every ``.py`` file under ``stdlib`` (default ``sysconfig.get_paths()["stdlib"]``) in
    sorted order of relative path, skipping test suites (``test/``, ``tests/``,
    ``idlelib/idle_test``, ``test_*.py``), third-party packages (``site-packages``,
    ``dist-packages``) and machine-specific files (``_sysconfigdata_*``, ``config-*/``, the
    ``*customize.py`` hooks) and links. From each it takes, in source order, the module, class
    and function docstrings (``ast``; doctest examples dropped) and the comments (``tokenize``;
    no shebang or coding line, no ``# ----`` rules, no codec tables), paragraph by paragraph, each
    normalised with :func:`text8_normalize`. A paragraph of 40 characters or more that has been
    seen already (a licence, a copied docstring) is left out. Files that cannot be decoded,
    tokenised or parsed are skipped and listed in ``unparsable``. The same tree always gives the
    same text, byte for byte. About 10 s for CPython 3.11's ~730 files on one core.
    """
    root = Path(stdlib) if stdlib is not None else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ValueError(f"stdlib must be a folder of Python modules; {str(root)!r} is not a "
                         f"folder")
    seen: set[str] = set()
    parts, files, starts, unparsable = [], [], [], []
    pos = 0
    for rel in _stdlib_files(root):
        try:
            raw = (root / rel).read_bytes()
            encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
            src = raw.decode(encoding)
            with warnings.catch_warnings():     # an old module's invalid escape is not our news
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(src)
            found = sorted(_docstrings(tree) + _comments(src), key=lambda item: item[0])
        except (SyntaxError, ValueError, UnicodeDecodeError, LookupError, tokenize.TokenError,
                OSError):
            unparsable.append(rel)
            continue
        kept = []
        for _, para in found:
            text = text8_normalize(para)
            if len(text) >= _DEDUP_MIN_CHARS:
                if text in seen:
                    continue
                seen.add(text)
            if text:
                kept.append(text)
        if kept:
            parts.append(" ".join(kept))
            files.append(rel)
            starts.append(pos)
            pos += len(parts[-1]) + 1
    return StdlibProse(" ".join(parts), tuple(files), tuple(starts), tuple(unparsable))


def offline_text(stdlib=None) -> str:
    """The offline corpus: :func:`pydoc_text`, then :func:`stdlib_prose` (lesson 9).

    Several million characters of English about Python that ship with every Python, in text8
    format. Built once per process and folder (~10 s); :func:`load_corpus` caches it on disk.
    """
    key = str(Path(stdlib).resolve()) if stdlib is not None else ""
    if key not in _OFFLINE_MEMO:
        _OFFLINE_MEMO[key] = (pydoc_text() + " " + stdlib_prose(stdlib).text).strip()
    return _OFFLINE_MEMO[key]


def offline_path(root=None) -> Path:
    """Where :func:`load_corpus` caches the encoded :func:`offline_text` for this Python (lesson 9).

    ``root/fallback-<implementation><version>-v<OFFLINE_FORMAT>.u8`` (root defaults to
    :func:`data_dir`), e.g. ``fallback-cpython3.11.7-v1.u8``, with its SHA-256 in a ``.sha256``
    file beside it, as for text8.
    """
    root = Path(root) if root is not None else data_dir()
    python = f"{sys.implementation.name}{platform.python_version()}"
    return root / f"fallback-{python}-v{OFFLINE_FORMAT}.u8"


def _offline_ids(root=None) -> np.ndarray:
    out = offline_path(root)
    if _cached_ok(out):
        return np.fromfile(out, dtype=np.uint8)
    payload = encode(offline_text()).tobytes()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(out.parent, out, payload)
        _write_atomic(out.parent, out.with_name(out.name + ".sha256"),
                      (hashlib.sha256(payload).hexdigest() + f"  {out.name}\n").encode())
    except OSError:
        pass    # an unusable data folder: the corpus works from memory, it is only rebuilt
    return np.frombuffer(payload, dtype=np.uint8)


def _offline_name() -> str:
    v = sys.version_info
    return f"fallback (Python {v.major}.{v.minor} docs, docstrings and comments)"


def _warn_fallback(err: DataError, chars: int) -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    reason = " ".join(str(err).split()).split(". ")[0].rstrip(".")
    v = sys.version_info
    warnings.warn(f"text8 is not available ({reason}).\nUsing the offline corpus: {chars:,} "
                  f"characters of Python {v.major}.{v.minor}'s docs, docstrings and comments.\n"
                  f"Its bits/char are NOT text8 numbers; load_corpus('text8', fallback=False) "
                  f"says how to get text8.", FallbackWarning, stacklevel=3)


def load_corpus(name: str = "text8", *, fallback: bool = True, root=None, **text8_kwargs) -> Corpus:
    """Load a corpus split 90/5/5 by position (lesson 9).

    ``name`` is ``"text8"`` (downloaded and cached; memory-mapped), ``"fallback"`` (the offline
    corpus, :func:`offline_text`, cached in ``root`` or :func:`data_dir`), ``"pydoc"`` (its small
    first part, :func:`pydoc_text`) or the path of a text file already in text8 format (e.g. the
    corpus that benchmarks/make_doc_corpus.py writes). With ``fallback=True`` a text8 that cannot
    be obtained is replaced by the offline corpus, with one :class:`FallbackWarning` per process;
    with ``fallback=False`` the DataError is raised.

    The offline corpus is ordered by file (the pydoc topics first, then the standard library in
    sorted order of path), so its valid and test splits are the last modules of that order, whole
    files that training never saw, except the one file each cut passes through (CPython 3.11:
    valid runs from the middle of ``typing.py`` through ``unittest`` and ``urllib`` to
    ``wsgiref``, test from ``wsgiref`` to ``zoneinfo``).
    """
    if name == "text8":
        try:
            path = text8_path(root, **text8_kwargs)
        except DataError as err:
            if not fallback:
                raise
            ids = _offline_ids(root)
            _warn_fallback(err, len(ids))
            return _split(ids, _offline_name(), False)
        return _split(np.memmap(path, dtype=np.uint8, mode="r"), "text8", True)
    if name == "fallback":
        return _split(_offline_ids(root), _offline_name(), False)
    if name == "pydoc":
        return _split(encode(pydoc_text()), "pydoc (Python's pydoc topics)", False)
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"corpus must be 'text8', 'fallback', 'pydoc' or the path of a "
                         f"text8-format text file; {name!r} is none of these")
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
           "FallbackWarning", "OFFLINE_FORMAT", "pydoc_text", "fallback_text", "StdlibProse",
           "stdlib_prose", "offline_text", "offline_path", "CropSampler", "eval_chunks"]

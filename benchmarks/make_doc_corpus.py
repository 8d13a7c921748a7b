"""Build a text8-format corpus (~10M characters) from the HTML of Debian's python3.11-doc package.

    python benchmarks/make_doc_corpus.py [--out .gpu/doc_corpus.txt] [--chars 10000000]

Runs where apt can download (not on the GPU machine, which has no network): ``apt-get download
python3.11-doc`` into a temporary folder, ``dpkg -x`` it, strip the HTML tags of every page (in
sorted order, so the corpus is reproducible), normalise with
``ddlab.text.data.text8_normalize`` and write the first ``--chars`` characters to
``.gpu/doc_corpus.txt`` (git-ignored). gpu_check.sh trains on it. Its bits/char are numbers for *this* corpus, never text8 numbers.
"""

from __future__ import annotations

import argparse
import html
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ddlab.text.data import text8_normalize   # noqa: E402

PACKAGE = "python3.11-doc"


def html_to_text(page: str) -> str:
    """Drop scripts, styles and tags; unescape entities."""
    page = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", page)
    page = re.sub(r"(?s)<[^>]+>", " ", page)
    return html.unescape(page)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / ".gpu" / "doc_corpus.txt"))
    p.add_argument("--chars", type=int, default=10_000_000)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True)
        deb = next(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        pages = sorted((Path(tmp) / "x").rglob("*.html"))
        if not pages:
            raise SystemExit(f"no HTML pages found in {deb.name}")
        parts, total = [], 0
        for page in pages:
            text = text8_normalize(html_to_text(page.read_text(encoding="utf-8", errors="replace")))
            if text:
                parts.append(text)
                total += len(text) + 1
            if total >= a.chars:
                break
    corpus = " ".join(parts)[: a.chars].strip()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(corpus, encoding="ascii")
    print(f"wrote {len(corpus):,} characters from {len(parts)} pages of {deb.name} to {out}")
    if len(corpus) < a.chars:
        print(f"note: the package holds fewer than {a.chars:,} characters of text")


if __name__ == "__main__":
    main()

"""Training-corpus builder: gathers offline text with clear licences.

Sources are Debian documentation packages and the Python standard library
installed on the build machine (see ``SOURCES``).  The benchmark files in
``../shared/corpus`` are never read here.  Documents are de-duplicated by
content hash, shuffled deterministically and split into train/held-out
files; ``MANIFEST.json`` records every source with its size and licence.
"""
from __future__ import annotations

import gzip
import hashlib
import html.parser
import json
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


class _TextExtractor(html.parser.HTMLParser):
    """HTML to plain text: keeps visible text, drops script/style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "pre", "dt", "dd"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(raw: str) -> str:
    p = _TextExtractor()
    p.feed(raw)
    lines = [" ".join(line.split()) for line in "".join(p.parts).splitlines()]
    out, blank = [], False
    for line in lines:
        if line:
            out.append(line)
            blank = False
        elif not blank:
            out.append("")
            blank = True
    return "\n".join(out).strip() + "\n"


@dataclass
class Source:
    name: str
    package: str
    licence: str
    files: Callable[[], Iterator[Path]]
    read: Callable[[Path], bytes]
    cap_bytes: int


def _glob(root: str, pattern: str) -> Callable[[], Iterator[Path]]:
    return lambda: iter(sorted(Path(root).glob(pattern)))


def _raw(p: Path) -> bytes:
    return p.read_bytes()


def _gz(p: Path) -> bytes:
    return gzip.decompress(p.read_bytes())


def _html_text(p: Path) -> bytes:
    return html_to_text(p.read_text(errors="replace")).encode()


_STDLIB = sysconfig.get_paths()["stdlib"]
_PGDOC = "/usr/share/doc/postgresql-doc-15/html"

SOURCES = [
    Source("python-docs", "python3.11-doc (Debian)", "PSF-2.0",
           _glob("/usr/share/doc/python3.11-dev/html/_sources", "**/*.rst.txt"), _raw, 14_000_000),
    Source("postgresql-docs-text", "postgresql-doc-15 (Debian)", "PostgreSQL",
           _glob(_PGDOC, "*.html"), _html_text, 8_000_000),
    Source("postgresql-docs-html", "postgresql-doc-15 (Debian)", "PostgreSQL",
           _glob(_PGDOC, "[a-f]*.html"), _raw, 5_000_000),
    Source("wordnet", "dict-wn (Debian)", "WordNet-3.0",
           _glob("/usr/share/dictd", "wn.dict.dz"), _gz, 6_000_000),
    Source("jargon-file", "jargon-text (Debian)", "public-domain",
           _glob("/usr/share/doc/jargon-text", "jargon.txt.gz"), _gz, 3_000_000),
    Source("python-stdlib", "CPython 3.11 standard library", "PSF-2.0",
           lambda: iter(sorted(p for p in Path(_STDLIB).glob("**/*.py")
                               if "site-packages" not in p.parts)), _raw, 12_000_000),
    Source("go-stdlib", "golang-1.19-src (Debian)", "BSD-3-Clause",
           _glob("/usr/share/go-1.19/src", "**/*.go"), _raw, 8_000_000),
    # English prose (added for the tuned default: the sources above are mostly code and
    # reference text, and the starter was weak on running English)
    Source("debian-handbook (HTML → text)", "debian-handbook (Debian)", "GPL-2.0+ or CC-BY-SA-3.0",
           _glob("/usr/share/doc/debian-handbook/html/en-US", "*.html"), _html_text, 4_000_000),
    Source("debian-reference", "debian-reference-en (Debian)", "GPL-2.0+",
           _glob("/usr/share/debian-reference", "debian-reference.en.txt.gz"), _gz, 2_000_000),
    Source("debian-faq (HTML → text)", "debian-faq (Debian)", "GPL-2.0+",
           _glob("/usr/share/doc/debian/FAQ", "*.en.html"), _html_text, 1_000_000),
    Source("developers-reference (reST)", "developers-reference (Debian)", "GPL-2",
           _glob("/usr/share/developers-reference/_sources", "*.rst.txt"), _raw, 1_000_000),
    Source("gnu-standards", "gnu-standards (Debian)", "GFDL-1.3+",
           _glob("/usr/share/doc/gnu-standards", "*.text.gz"), _gz, 1_000_000),
    Source("linux-kernel-docs (reST)", "linux-doc-6.1 (Debian)", "GPL-2",
           _glob("/usr/share/doc/linux-doc-6.1/Documentation", "**/*.rst.gz"), _gz, 14_000_000),
    Source("man-pages (troff)", "manpages, manpages-dev (Debian)",
           "various free licences (Debian copyright file)",
           _glob("/usr/share/man", "man[237]/*.[237]*.gz"), _gz, 3_000_000),
]


FORBIDDEN = ("shared/corpus",)


def build(out: Path, heldout_fraction: float = 0.02, seed: int = 0,
          sources: list[Source] | None = None) -> dict:
    """Write ``train.txt``, ``heldout.txt`` and ``MANIFEST.json`` into *out*
    from *sources* (default: all of ``SOURCES``)."""
    out.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    docs: list[bytes] = []
    manifest: dict = {"sources": [], "seed": seed}
    for src in SOURCES if sources is None else sources:
        n_files = n_bytes = n_dup = 0
        for path in src.files():
            if any(f in str(path) for f in FORBIDDEN):
                raise RuntimeError(f"refusing benchmark file {path}")
            try:
                data = src.read(path)
            except (OSError, ValueError):
                continue
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if not data.strip() or digest in seen:
                n_dup += 1
                continue
            seen.add(digest)
            data = data[: src.cap_bytes - n_bytes]
            docs.append(data)
            n_files += 1
            n_bytes += len(data)
            if n_bytes >= src.cap_bytes:
                break
        if not n_files and not n_dup:
            raise RuntimeError(f"{src.name}: no files found; install {src.package} "
                               "(make model installs every source package)")
        manifest["sources"].append({"name": src.name, "package": src.package,
                                    "licence": src.licence, "files": n_files,
                                    "bytes": n_bytes, "duplicates_dropped": n_dup})
    random.Random(seed).shuffle(docs)
    n_held = max(1, int(len(docs) * heldout_fraction))
    sep = b"\n\x00\n"  # document separator, never inside a training window boundary rule
    (out / "heldout.txt").write_bytes(sep.join(docs[:n_held]))
    (out / "train.txt").write_bytes(sep.join(docs[n_held:]))
    manifest["train_bytes"] = (out / "train.txt").stat().st_size
    manifest["heldout_bytes"] = (out / "heldout.txt").stat().st_size
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Build the training corpus from offline sources.")
    ap.add_argument("out", type=Path, nargs="?", default=Path("build/corpus"))
    ap.add_argument("--sources", metavar="N", type=int,
                    help="only the first N sources (7 rebuilds the starter model's corpus)")
    args = ap.parse_args(argv)
    print(json.dumps(build(args.out, sources=SOURCES[:args.sources or len(SOURCES)]), indent=2))


if __name__ == "__main__":
    main()

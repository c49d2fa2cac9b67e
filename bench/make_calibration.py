"""Build the bundled calibration corpus (src/embedhost/data/calibration.txt): the texts
whose embeddings give a model's int8/uint8 ranges when its config names no corpus of its
own (see src/embedhost/calibration.py).

Real English prose from the docstrings of Python standard-library modules that the
benchmark corpus (bench/make_corpus.py, src/embedhost/cli/texts/) does *not* draw from,
so that bench/recall.py measures int8 on texts the ranges were not computed from. Half
short sentences (query-like), half passages of about 70 words (document-like), since both
kinds get quantized. Deterministic for a given Python version; the committed file came from
the project's virtual environment's CPython.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_corpus import MODULES, prose

CALIBRATION_MODULES = [
    "abc",
    "ast",
    "binascii",
    "bz2",
    "cmath",
    "code",
    "codeop",
    "colorsys",
    "compileall",
    "contextvars",
    "ctypes",
    "dbm",
    "dis",
    "graphlib",
    "gc",
    "html",
    "http.cookiejar",
    "importlib",
    "importlib.metadata",
    "importlib.resources",
    "json.decoder",
    "keyword",
    "linecache",
    "modulefinder",
    "netrc",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pstats",
    "profile",
    "py_compile",
    "pydoc",
    "quopri",
    "reprlib",
    "rlcompleter",
    "runpy",
    "site",
    "stat",
    "symtable",
    "sysconfig",
    "tabnanny",
    "tomllib",
    "tracemalloc",
    "unicodedata",
    "urllib.robotparser",
    "urllib.error",
    "venv",
    "wave",
    "webbrowser",
    "wsgiref.simple_server",
    "wsgiref.handlers",
    "xml.sax",
    "xml.sax.handler",
    "xml.dom.pulldom",
    "xmlrpc.client",
    "xmlrpc.server",
    "zipapp",
    "zipimport",
    "zlib",
    "cProfile",
    "array",
    "asyncio.streams",
    "asyncio.subprocess",
    "concurrent.futures.thread",
    "email.utils",
    "email.headerregistry",
    "email.policy",
    "json.encoder",
    "lib2to3",
    "multiprocessing.pool",
    "multiprocessing.managers",
    "numbers",
    "os.path",
    "string.templatelib",
    "unittest.mock",
    "http.cookiejar",
    "ipaddress",
    "getpass",
    "fileinput",
    "filecmp",
]
TEXTS = 640


def docstrings() -> list[str]:
    out: list[str] = []
    for name in CALIBRATION_MODULES:
        if name in MODULES:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [
            mod,
            *[
                v
                for _, v in sorted(vars(mod).items())
                if inspect.isclass(v) or inspect.isfunction(v)
            ],
        ]
        for obj in objs:
            doc = inspect.getdoc(obj)
            if doc and doc not in out:
                out.append(doc)
    return out


def main() -> None:
    bench_texts = Path(__file__).resolve().parent.parent / "src" / "embedhost" / "cli" / "texts"
    taken = set()
    for f in ("queries.txt", "passages.txt"):
        taken.update((bench_texts / f).read_text().splitlines())
    short: list[str] = []
    passages: list[str] = []
    for doc in docstrings():
        sents = [s for s in prose(doc) if s not in taken]
        for s in sents:
            if 6 <= len(s.split()) <= 20 and s not in short:
                short.append(s)
        buf: list[str] = []
        for s in sents:
            buf.append(s)
            if sum(len(b.split()) for b in buf) >= 70:
                passage = " ".join(buf)
                if len(passage.split()) <= 110 and passage not in taken:
                    passages.append(passage)
                buf = []
    texts: list[str] = []
    for i in range(max(len(short), len(passages))):
        for pool in (short, passages):
            if i < len(pool) and len(texts) < TEXTS:
                texts.append(pool[i])
    out = Path(__file__).resolve().parent.parent / "src" / "embedhost" / "data" / "calibration.txt"
    out.write_text("\n".join(texts) + "\n")
    print(len(short), len(passages), len(texts))


if __name__ == "__main__":
    main()

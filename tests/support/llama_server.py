"""llama.cpp's own ``llama-server``, the reference for GGUF rerankers: found or built.

Looked for in order: ``$LLAMA_SERVER``; a build of the installed llama-cpp-python's
vendored llama.cpp cached under ``.cache/gguf/``; one left by the bench's peer set-up
(``/tmp/peers``, same version). Otherwise built once from the sdist's ``vendor/llama.cpp``
with cmake (minutes), and cached. Also: start one on a GGUF, reranking, on a free port.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

from tests.support.servers import free_port, spawn, wait_answering


def llama_server_binary() -> Path:
    from tests.engines.gguf_build import CACHE, llama_cpp_version, vendor_dir

    ver = llama_cpp_version()
    env = os.environ.get("LLAMA_SERVER")
    build = CACHE / f"llama-cpp-python-{ver}" / "full" / "build"
    candidates = [
        *([Path(env)] if env else []),
        build / "bin" / "llama-server",
        Path(f"/tmp/peers/llama_cpp_python-{ver}/vendor/llama.cpp/build/bin/llama-server"),
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    vendor_dir()  # downloads the sdist
    sdist = next((CACHE / f"llama-cpp-python-{ver}").glob("llama_cpp_python-*.tar.gz"))
    src = build.parent / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        prefix = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(build.parent, members=members, filter="data")
    subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build), "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON"],
        check=True,
    )
    subprocess.run(
        ["nice", "-n", "10", "cmake", "--build", str(build), "--target", "llama-server", "-j"],
        check=True,
    )
    return build / "bin" / "llama-server"


def start_reranking(gguf: Path, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """``llama-server --reranking`` on ``gguf``; its URL and process, once it answers."""
    port = free_port()
    proc = spawn(
        [
            str(llama_server_binary()),
            "-m",
            str(gguf),
            "--reranking",
            "-fa",
            "off",  # as the llama_cpp engine scores pairs (see engines/llama_cpp.py)
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-t",
            "1",
            "-c",
            "2048",
            "-ub",
            "512",
            "-b",
            "512",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    wait_answering(proc, f"{url}/health", timeout=120, log=log)
    return url, proc

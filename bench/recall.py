"""Quality of compact vectors (issue 22): recall@10 of int8 and of binary retrieval against
float retrieval, on the bundled corpus (src/embedhost/cli/texts/). Not a timing benchmark.

One ``embedhost serve`` (MiniLM, float32 unless ``--dtype``; vector cache off; a fresh
calibration directory, so the int8 ranges are computed from the bundled calibration corpus,
src/embedhost/data/calibration.txt, which shares no text with the corpus measured here).
Every text goes through ``POST /v2/embed`` once, asking for float, int8 and ubinary.

Queries: every 5th line of queries.txt (short docstring sentences). Documents: passages.txt
and the other lines of queries.txt (a query's own sentence is never a document). The
reference is float retrieval (cosine: the vectors are normalized) and each method's
recall@10 is the share of the float top 10 it returns in its own top 10, averaged:

* int8: dot product of the int8 query and int8 documents (int32 sums), top 10 as is, and
  its top 40 re-ranked by the float dot product;
* int8 documents, float query: each document dequantized (``min + step * (uint8 + 0.5)``
  per dimension, the ranges from /info) and scored against the float query;
* binary: Hamming distance of the packed sign bits, top 10 as is;
* binary + rescoring: Hamming top 40, re-ranked by the float dot product (the float
  vectors kept beside the index, as vector stores do), top 10.

Run:  .venv/bin/python bench/recall.py [--dtype float32] [--rescore 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import corpus, machine, start_serve, stop, wait_ready, write_json
from tests.support import MINILM

K = 10


def embed(url: str, texts: list[str], input_type: str) -> dict[str, np.ndarray]:
    out: dict[str, list[Any]] = {"float": [], "int8": [], "ubinary": []}
    with httpx.Client(timeout=600) as client:
        for i in range(0, len(texts), 64):
            r = client.post(
                f"{url}/v2/embed",
                json={
                    "texts": texts[i : i + 64],
                    "input_type": input_type,
                    "embedding_types": list(out),
                },
            )
            r.raise_for_status()
            for t in out:
                out[t] += r.json()["embeddings"][t]
    return {
        "float": np.array(out["float"], dtype=np.float32),
        "int8": np.array(out["int8"], dtype=np.int8),
        "ubinary": np.array(out["ubinary"], dtype=np.uint8),
    }


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (ties: the lower index)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def hamming(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(q[:, None, :] ^ d[None, :, :], axis=2)
    return bits.sum(axis=2, dtype=np.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rescore", type=int, default=40)
    args = ap.parse_args()

    lines = corpus("queries.txt")
    queries = lines[::5]
    docs = list(dict.fromkeys(corpus("passages.txt") + [t for t in lines if t not in queries]))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        config = {
            "models": [{"name": "minilm", "path": MINILM, "dtype": args.dtype}],
            "cache": {"enabled": False},
            "quantization": {"dir": str(tmp / "calibration")},
        }
        proc, url, t0 = start_serve(config, tmp, "recall")
        try:
            wait_ready(proc, url, t0)
            q = embed(url, queries, "search_query")
            dv = embed(url, docs, "search_document")
            info = httpx.get(f"{url}/info", timeout=30).json()["quantization"]
        finally:
            stop(proc)
    (calibration,) = info["calibrations"].values()
    truth = top(q["float"] @ dv["float"].T, K)
    int8_scores = q["int8"].astype(np.int32) @ dv["int8"].astype(np.int32).T
    ranges = np.array(
        [calibration["ranges"]["min"], calibration["ranges"]["max"]], dtype=np.float32
    )
    steps = (ranges[1] - ranges[0]) / 255
    dequantized = ranges[0] + steps * (dv["int8"].astype(np.float32) + 128.5)
    float_scores = q["float"] @ dv["float"].T
    int8_top = top(int8_scores, args.rescore)
    int8_rescored = np.take_along_axis(
        int8_top, top(np.take_along_axis(float_scores, int8_top, axis=1), K), axis=1
    )
    ham = hamming(q["ubinary"], dv["ubinary"])
    ham_top = top(-ham.astype(np.float32), args.rescore)
    rescored = np.take_along_axis(q["float"] @ dv["float"].T, ham_top, axis=1)
    binary_rescored = np.take_along_axis(ham_top, top(rescored, K), axis=1)
    dims = q["float"].shape[1]
    rows = [
        ("float32 (reference)", dims * 4, 1.0),
        ("int8 (dot product)", dims, recall(top(int8_scores, K), truth)),
        (f"int8 (top {args.rescore}, float rescoring)", dims, recall(int8_rescored, truth)),
        ("int8 documents, float query", dims, recall(top(q["float"] @ dequantized.T, K), truth)),
        ("binary (Hamming)", dims // 8, recall(top(-ham.astype(np.float32), K), truth)),
        (
            f"binary (Hamming top {args.rescore}, float rescoring)",
            dims // 8,
            recall(binary_rescored, truth),
        ),
    ]
    result = {
        "machine": machine(),
        "model": MINILM,
        "dtype": args.dtype,
        "queries": len(queries),
        "documents": len(docs),
        "calibration": {k: calibration[k] for k in ("corpus", "texts", "compute_s", "key")},
        "recall_at_10": {name: r for name, _, r in rows},
    }
    print(
        f"{len(queries)} queries, {len(docs)} documents, MiniLM {args.dtype}, {dims} dims; "
        f"int8 ranges from the {calibration['corpus']} corpus ({calibration['texts']} texts)"
    )
    print("| vectors | bytes per vector | recall@10 vs float |")
    print("|---|---|---|")
    for name, size, r in rows:
        print(f"| {name} | {size} | {r:.3f} |")
    print(write_json("recall", result))


if __name__ == "__main__":
    main()

"""Offline engine probe: the transformers engine on server-like batches, in a fresh process.

Measures texts/s on batches like the server forms them (short texts in arrival order in
batches of 12; passages in batches of 16; mixed lengths from the whole corpus in batches of
1-32) and the process's RSS after a stream of mixed batches, for one variant. Used to decide
the engine's defaults by A/B ratios in alternating rounds (bench/RESULTS.md, issue 10).

Run:  .venv/bin/python bench/probe_engine.py --rounds 3 --variants padded,packed
      (a variant may set an allocator: packed+jemalloc, padded+tcmalloc)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

from _harness import MINILM, corpus

ALLOCATORS = {
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}


def child(variant: str, dtype: str, threads: int | None) -> dict[str, Any]:
    import psutil

    from embedhost.config import ModelConfig
    from embedhost.engines import create_engine
    from embedhost.tokenization import load_tokenizer, prepare_texts

    packing = "packed" in variant.split("+")
    cfg = ModelConfig(
        name="probe",
        path=MINILM,
        dtype=dtype,  # type: ignore[arg-type]
        engine_options={"packing": packing},
        threads=threads,
    )
    t0 = time.perf_counter()
    engine = create_engine(cfg)
    info = engine.load()
    tok = load_tokenizer(cfg)
    load_s = time.perf_counter() - t0
    short = prepare_texts(tok, corpus("queries.txt"), info.max_tokens, "right").ids
    passages = prepare_texts(tok, corpus("passages.txt"), info.max_tokens, "right").ids
    every = short + passages
    rng = random.Random(0)
    proc = psutil.Process()
    out: dict[str, Any] = {"variant": variant, "load_s": load_s}
    if "warm" in variant.split("+"):
        from embedhost.worker.process import _warm

        t0 = time.perf_counter()
        _warm(engine, info)
        out["warm_s"] = time.perf_counter() - t0
    out["rss_ready_mb"] = proc.memory_info().rss / 2**20

    def batches(kind: str) -> list[list[list[int]]]:
        if kind == "short":
            return [short[i : i + 12] for i in range(0, 720, 12)]
        if kind == "passages":
            return [rng.sample(passages, 16) for _ in range(20)]
        res = []
        for _ in range(100):
            res.append(rng.sample(every, rng.randint(1, 32)))
        return res

    for kind in ("short", "passages", "mixed"):
        bs = batches(kind)
        n = sum(len(b) for b in bs)
        # First pass: new shapes (cold); second pass: the same batches again (warm). CPU
        # seconds per text are what the A/B reads on a shared machine (wall time is noisy).
        for label in ("cold", "warm"):
            c0, t0 = proc.cpu_times(), time.perf_counter()
            for b in bs:
                engine.embed(b)
            c1, t1 = proc.cpu_times(), time.perf_counter()
            cpu = (c1.user - c0.user) + (c1.system - c0.system)
            out[f"{kind}_{label}_per_cpu_s"] = n / cpu
            out[f"{kind}_{label}_per_s"] = n / (t1 - t0)
        out[f"rss_after_{kind}_mb"] = proc.memory_info().rss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variants", default="padded,packed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dtype, args.threads)))
        return
    variants = args.variants.split(",")
    rows = []
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            env = dict(os.environ)
            for name, lib in ALLOCATORS.items():
                if name in v.split("+"):
                    env["LD_PRELOAD"] = lib
            cmd = [sys.executable, __file__, "--child", v, "--dtype", args.dtype]
            cmd += ["--threads", str(args.threads)]
            res = json.loads(
                subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            res["round"] = r
            rows.append(res)
            print(
                json.dumps({k: round(x, 1) if isinstance(x, float) else x for k, x in res.items()}),
                flush=True,
            )


if __name__ == "__main__":
    main()

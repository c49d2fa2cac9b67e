"""``embedhost embed`` of a sharded corpus: ``--local`` against ``--ray`` with one and two
engine actors, texts/s on this machine, in one run.

The corpus: the package's passages (about 100 tokens each), repeated to ``--texts`` rows
and cut into ``--shards`` JSONL shards. ``--local`` embeds their concatenation (one file;
the command's input is a file); ``--ray`` embeds the shards on a local Ray cluster this
script starts (one head node with every core, no dashboard), one output Parquet a shard.
Each engine gets ``cores / actors`` threads, so every mode uses the whole machine.

Two figures per mode: ``wall``, texts over the whole command (start-up and model loading
included, what a user waits for), and ``reported``, the command's own texts/s line
(``--local`` starts its clock once the model is loaded; ``--ray`` once Ray is connected,
so its actors' model loading is inside it).

Run:  .venv/bin/python bench/ray_embed.py [--texts 4000] [--shards 4] [--rounds 1]
Needs embedhost[ray]. Writes bench/out/ray-embed-<time>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import MINILM, ROOT, corpus, free_port, machine, write_json

RATE = re.compile(r"(\d+) texts embedded in ([\d.]+)s \((\d+) texts/s\)")


def env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
    }


def start_head(tmp: Path, cores: int) -> tuple[subprocess.Popen[bytes], str]:
    gcs = free_port()
    ports = {
        "--port": gcs,
        "--ray-client-server-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short socket paths
    log = tmp / "ray-head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                f"--num-cpus={cores}", "--include-dashboard=false", "--disable-usage-stats",
                f"--temp-dir={ray_tmp}", *[f"{k}={v}" for k, v in ports.items()],
            ],
            env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while b"Ray runtime started" not in log.read_bytes():
        if head.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the ray head did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    return head, f"127.0.0.1:{gcs}"


def stop_head(head: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(10)


def write_corpus(tmp: Path, texts: int, shards: int) -> tuple[Path, Path]:
    passages = corpus("passages.txt")
    rows = [{"text": passages[i % len(passages)]} for i in range(texts)]
    shard_dir = tmp / "shards"
    shard_dir.mkdir()
    per = -(-texts // shards)
    for s in range(shards):
        with (shard_dir / f"part-{s:03d}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[s * per : (s + 1) * per])
    whole = tmp / "corpus.jsonl"
    whole.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return shard_dir, whole


def config(tmp: Path, threads: int) -> Path:
    path = tmp / f"embedhost-{threads}.yaml"
    path.write_text(
        yaml.safe_dump({"models": [{"name": "minilm", "path": MINILM, "threads": threads}]})
    )
    return path


def run_mode(cmd: list[str], texts: int) -> dict[str, Any]:
    t0 = time.monotonic()
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    m = RATE.search(done.stderr)
    return {
        "wall_s": round(wall, 2),
        "wall_texts_per_s": round(texts / wall, 1),
        "reported_texts_per_s": float(m.group(3)) if m else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of all modes")
    ap.add_argument("--actors", default="1,2", help="actor counts for --ray")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    # Ray's token auth with this run's own token (a stale ~/.ray token must not interfere).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    actor_counts = [int(a) for a in args.actors.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="ray-embed-") as t:
        tmp = Path(t)
        shard_dir, whole = write_corpus(tmp, args.texts, args.shards)
        head, address = start_head(tmp, cores)
        try:
            for r in range(args.rounds):
                base = [sys.executable, "-m", "embedhost", "embed"]
                common = ["--batch-size", str(args.batch_size), "--quiet"]
                out = tmp / f"local-{r}.parquet"
                cmd = [
                    *base,
                    str(whole),
                    "-o",
                    str(out),
                    "--local",
                    "--config",
                    str(config(tmp, cores)),
                    *common,
                ]
                results.setdefault("local", []).append(run_mode(cmd, args.texts))
                print(f"round {r} local: {results['local'][-1]}", file=sys.stderr)
                for n in actor_counts:
                    threads = max(1, cores // n)
                    outdir = tmp / f"ray-{n}-{r}"
                    cmd = [
                        *base, str(shard_dir), "-o", str(outdir), "--ray", address,
                        "--replicas", str(n), "--num-cpus", str(cores / n),
                        "--config", str(config(tmp, threads)), *common,
                    ]  # fmt: skip
                    results.setdefault(f"ray-{n}", []).append(run_mode(cmd, args.texts))
                    print(f"round {r} ray-{n}: {results[f'ray-{n}'][-1]}", file=sys.stderr)
        finally:
            stop_head(head)
    path = write_json(
        "ray-embed",
        {"machine": machine(), "args": vars(args), "results": results},
    )
    print(f"\n{args.texts} texts in {args.shards} shards, batch {args.batch_size}; {path.name}\n")
    print("| mode | wall texts/s | reported texts/s | wall s |")
    print("|---|---|---|---|")
    for mode, runs in results.items():
        best = max(runs, key=lambda x: x["wall_texts_per_s"])
        print(
            f"| {mode} | {best['wall_texts_per_s']} | {best['reported_texts_per_s']} | {best['wall_s']} |"
        )


if __name__ == "__main__":
    main()

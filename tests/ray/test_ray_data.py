"""``embedhost embed INPUT -o OUTDIR --ray ADDRESS`` on a real local Ray cluster started by
this module (one head node, 2 CPUs, no dashboard) with two engine actors, the real MiniLM
model in each: the shards' vectors equal ``--local``'s, in input order, and a run killed
midway (SIGKILL of the command) is finished by a rerun that leaves the finished shards
alone. About 2 minutes here; run niced on a shared machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from embedhost.cli.corpus import LocalEmbedder, embed_corpus, text_hash
from embedhost.cli.corpus.raydata import find_shards
from tests.support import MINILM, ROOT
from tests.support.servers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(900)]

ROWS = (40, 600, 40)
"""Rows per shard: the long middle one is where the first run gets killed (the first
shard is finished once the middle one's first rows are back)."""
SHARDS = len(ROWS)
TOPICS = ["password resets", "vector search", "the cat on the mat", "Ray Data", "invoices"]


def _env() -> dict[str, str]:
    # RAY_AUTH_MODE and RAY_AUTH_TOKEN come from tests/ray/conftest.py, through os.environ.
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head node with 2 CPUs: two actors of 1 CPU hold them all (the read tasks take
    none)."""
    tmp = tmp_path_factory.mktemp("raydata")
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short socket paths
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
    log = tmp / "ray-head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                f"--temp-dir={ray_tmp}", *[f"{k}={v}" for k, v in ports.items()],
            ],
            env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def started() -> bool:
            assert head.poll() is None, log.read_text(errors="replace")
            return b"Ray runtime started" in log.read_bytes()

        wait_until(started, "the ray head to start", timeout=120, every=0.2)
        yield f"127.0.0.1:{gcs}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three JSONL shards (ids in ``doc``, not sorted) and a config with one engine thread
    (two actors share this machine's two cores)."""
    tmp = tmp_path_factory.mktemp("shards")
    for s in range(SHARDS):
        with (tmp / f"part-{s}.jsonl").open("w") as f:
            for i in range(ROWS[s]):
                words = " ".join(TOPICS[(i + k) % len(TOPICS)] for k in range(1 + i % 7))
                text = f"Shard {s}, row {i}: a note about {words}."
                f.write(json.dumps({"doc": f"{s}-{(i * 37) % ROWS[s]}", "text": text}) + "\n")
    config = tmp / "embedhost.yaml"
    config.write_text(
        yaml.safe_dump({"models": [{"name": "minilm", "path": MINILM, "threads": 1}]})
    )
    return tmp, config


def _reference(shards: list[Path], config: Path, out: Path) -> None:
    """``--local``'s output for each shard: the same corpus run, in this process."""

    async def go() -> None:
        embedder = LocalEmbedder(config)
        try:
            await embedder.start()
            for shard in shards:
                summary = await embed_corpus(
                    shard, out / f"{shard.stem}.parquet", embedder, id_field="doc"
                )
                assert summary.error is None, summary.error
        finally:
            await embedder.close()

    asyncio.run(go())


def _command(shards: Path, out: Path, config: Path, address: str) -> list[str]:
    return [
        sys.executable, "-m", "embedhost", "embed", str(shards / "*.jsonl"), "-o", str(out),
        "--ray", address, "--replicas", "2", "--num-cpus", "1", "--batch-size", "8",
        "--id-field", "doc", "--config", str(config), "--quiet",
    ]  # fmt: skip


def test_find_shards_file_directory_glob(corpus: tuple[Path, Path]) -> None:
    shards, _ = corpus
    every = [shards / f"part-{s}.jsonl" for s in range(SHARDS)]
    assert find_shards(str(shards)) == every
    assert find_shards(str(shards / "part-*.jsonl")) == every
    assert find_shards(str(every[1])) == [every[1]]


def test_killed_midway_then_resumed_equals_local(
    cluster: str, corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    shards, config = corpus
    out = tmp_path / "vectors"
    names = [f"part-{s}.parquet" for s in range(SHARDS)]
    log = tmp_path / "first.log"
    with log.open("wb") as f:
        first = subprocess.Popen(
            _command(shards, out, config, cluster), env=_env(), stdout=f, stderr=subprocess.STDOUT
        )
    try:

        def one_done() -> list[str]:
            assert first.poll() is None, log.read_text(errors="replace")
            return [n for n in names if (out / n).exists()]

        done = wait_until(one_done, "a first finished shard", timeout=300, every=0.05)
    finally:
        first.kill()  # SIGKILL: no clean-up of any kind
        first.wait(30)
    assert len(done) < SHARDS, "the run finished before it could be killed midway"
    before = {n: (out / n).stat() for n in done}

    second = subprocess.run(
        _command(shards, out, config, cluster),
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(done)} already done skipped" in second.stderr
    left = sum(ROWS[s] for s in range(SHARDS) if names[s] not in done)
    assert f"{left} texts embedded" in second.stderr
    for n, st in before.items():  # the finished shards were not rewritten
        now = (out / n).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert sorted(p.name for p in out.iterdir()) == names  # no partial file left

    reference = tmp_path / "local"
    reference.mkdir()
    _reference(find_shards(str(shards)), config, reference)
    for s in range(SHARDS):
        got = pq.read_table(out / names[s])
        want = pq.read_table(reference / names[s])
        assert got.schema.equals(want.schema)
        rows = [json.loads(x) for x in (shards / f"part-{s}.jsonl").read_text().splitlines()]
        assert got.column("id").to_pylist() == [r["doc"] for r in rows]  # input order
        assert got.column("text_sha256").to_pylist() == [text_hash(r["text"]) for r in rows]
        a = np.stack(got.column("embedding").to_numpy(zero_copy_only=False))
        b = np.stack(want.column("embedding").to_numpy(zero_copy_only=False))
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= 0.9999, (s, cos.min())


def test_bad_row_stops_naming_shard_and_row(cluster: str, tmp_path: Path) -> None:
    """An empty text in the second shard: exit 1 naming it and its row; the first shard,
    finished before it, is in place; the bad one is not (nor its partial file)."""
    shards = tmp_path / "in"
    shards.mkdir()
    for s in range(2):
        rows = [{"doc": f"{s}-{i}", "text": f"text {i} of shard {s}"} for i in range(12)]
        if s == 1:
            rows[4]["text"] = "  "
        (shards / f"part-{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "embedhost.yaml"
    config.write_text(
        yaml.safe_dump({"models": [{"name": "minilm", "path": MINILM, "threads": 1}]})
    )
    out = tmp_path / "vectors"
    done = subprocess.run(
        _command(shards, out, config, cluster),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "row 5:" in done.stderr and "part-1.jsonl" in done.stderr, done.stderr
    assert "is empty" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["part-0.parquet"]
    assert pq.read_table(out / "part-0.parquet").column("id").to_pylist() == [
        f"0-{i}" for i in range(12)
    ]

"""The worker process (child side): verify the checksum, load the engine, warm it up,
then embed the batches the supervisor sends until told to stop.

Protocol (pickled tuples). Parent to child: ``("embed", batch_id, [ids, ...])``,
``("states", batch_id, ids)`` (one sequence's token states, late chunking), ``("stop",)``. Child to parent: ``("phase", "verifying"|"loading"|"warming")``,
``("verified", file digests, files hashed, bytes hashed)`` (after verifying, see
``modelfiles.remember``), ``("ready", info)``, ``("load_failed", permanent, message)``, ``("ok", batch_id, vectors)``,
``("error", batch_id, message)``.

This module is the spawned process's entry point: it imports the engine (and so torch,
llama.cpp or ONNX Runtime) only inside :func:`worker_main`, in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from embedhost import catalog
from embedhost.config import ModelConfig
from embedhost.engines import create_engine
from embedhost.engines.base import EngineInfo
from embedhost.errors import ConfigError
from embedhost.logs import setup_logging
from embedhost.modelfiles import HASH_STATS, hashed_files, remember, verify_checksum

log = logging.getLogger(__name__)

# (sequences, tokens each). A packing engine (transformers on BERT-class models) runs these
# as rows of 32-256 tokens, 1-8 rows: the shapes short-text and passage traffic uses most, so
# that their one-off kernel set-up (oneDNN builds a primitive per shape) happens here.
_WARMUP_SHAPES = ((1, 8), (8, 16), (32, 16), (4, 128), (1, 32), (2, 64), (3, 128), (2, 256))
# A restart warms with the smallest shape only: requests are being refused until the
# replica is back, and on a busy machine the full set took most of a restart (22 s of
# 25 s for a GGUF worker at a load average of 22; bench/RESULTS.md, issue 15).
_RESTART_WARMUP_SHAPES = _WARMUP_SHAPES[:1]


# --------------------------------------------------------------------------------------------
# child side


def _warm(
    engine: Any,
    info: EngineInfo,
    vocab_floor: int = 1000,
    shapes: tuple[tuple[int, int], ...] = _WARMUP_SHAPES,
) -> None:
    """Run a few representative shapes so that the first real request is not the slow one."""
    rng = np.random.default_rng(0)
    for n, length in shapes:
        length = min(length, info.max_tokens)
        batch = rng.integers(100, vocab_floor, size=(n, length)).tolist()
        engine.embed(batch)


def worker_main(
    conn: Connection,
    config_json: str,
    engine_row: catalog.EngineRow,
    log_config: dict[str, str] | None = None,
    known_files: dict[str, Any] | None = None,
    restart: bool = False,
) -> None:
    """Entry point of the worker process. ``engine_row``: the engine's catalog row as the
    parent resolved it (a row registered there is not in this fresh process's catalog
    until adopted here). ``known_files``: weight files already hashed in this process tree
    (``modelfiles.hashed_files``), not hashed again when unchanged. ``restart``: the
    replica served before and is coming back; it warms up briefly."""
    # The API process owns shutdown: Ctrl-C in a terminal, or a SIGTERM sent to the whole
    # process group (systemd's default), must not kill batches that the API process is
    # still draining. The worker exits when told to, or when the pipe closes (parent gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if log_config is not None:
        setup_logging(
            log_config["level"],
            log_config["format"],
            process="worker",
            instance=log_config.get("instance"),
            destination=log_config.get("destination", "stderr"),
        )
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s"
        )
    catalog.adopt(engine_row)  # before the config is validated: it names this engine
    config = ModelConfig.model_validate_json(config_json)
    try:
        _load_and_serve(conn, config, known_files, restart)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        # The API process is gone (SIGKILL, OOM kill) while a message was on its way to
        # it: nobody is left to read it, and no traceback is owed to anyone.
        log.info("worker pid %d: the API process has gone; exiting", os.getpid())


def _load_and_serve(
    conn: Connection,
    config: ModelConfig,
    known_files: dict[str, Any] | None,
    restart: bool,
) -> None:
    try:
        conn.send(("phase", "verifying"))
        if known_files:
            remember(known_files)
        digest = verify_checksum(config)
        conn.send(("verified", hashed_files(), HASH_STATS.hashed_files, HASH_STATS.hashed_bytes))
        conn.send(("phase", "loading"))
        engine = create_engine(config)
        info = engine.load()
        info.details["checksum"] = digest
        if config.warmup:
            conn.send(("phase", "warming"))
            _warm(engine, info, shapes=_RESTART_WARMUP_SHAPES if restart else _WARMUP_SHAPES)
    except ConfigError as exc:
        conn.send(("load_failed", True, exc.message))
        return
    except ImportError as exc:
        conn.send(("load_failed", True, str(exc)))
        return
    except BaseException as exc:
        conn.send(("load_failed", False, f"{type(exc).__name__}: {exc}"))
        return
    log.info(
        "worker pid %d: model %s loaded (%s, %d dims, %s on %s)",
        os.getpid(),
        config.ref,
        info.engine,
        info.dims,
        info.dtype,
        info.device,
    )
    conn.send(("ready", info.to_dict()))

    # A reader thread keeps the pipe drained so the API process never blocks on a send.
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def reader() -> None:
        try:
            while True:
                inbox.put(conn.recv())
        except (EOFError, OSError):
            inbox.put(("stop",))

    threading.Thread(target=reader, daemon=True, name="worker-reader").start()
    try:
        _serve(conn, inbox, engine)
    finally:
        with contextlib.suppress(Exception):
            engine.close()


def _serve(conn: Connection, inbox: queue.SimpleQueue[Any], engine: Any) -> None:
    """Embed the batches the reader thread queues until told to stop (or the pipe closes)."""
    while True:
        msg = inbox.get()
        if msg[0] == "stop":
            return
        op, batch_id, batch = msg
        try:
            # "states": an engine whose info says token_states has the method (TokenStates).
            vecs = engine.embed(batch) if op == "embed" else engine.token_states(batch)
        except Exception as exc:
            log.error("batch %s failed: %s", batch_id, traceback.format_exc())
            conn.send(("error", batch_id, f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", batch_id, vecs))

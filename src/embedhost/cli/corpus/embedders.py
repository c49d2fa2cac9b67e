"""Where the vectors come from: :class:`HttpEmbedder` (any OpenAI-compatible server, with
retries) and :class:`LocalEmbedder` (the server's own path in this process, ``--local``)."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from embedhost.cli.corpus.errors import CorpusError, EmbedFailed

if TYPE_CHECKING:
    from embedhost.core import Core


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> np.ndarray[Any, Any]: ...

    async def close(self) -> None: ...


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_ITEM = re.compile(r"\binput (\d+)\b")


class HttpEmbedder:
    """``POST /v1/embeddings`` on any OpenAI-compatible server (base64 vectors), retrying
    429 and 503 answers after their ``Retry-After`` (else a doubling backoff) and dropped
    connections, ``retries`` times."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        input_type: str | None = None,
        retries: int = 8,
        timeout: float = 300.0,
        transport: Any = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10),
            transport=transport,
        )
        self.model = model
        self.input_type = input_type
        self.retries = retries
        self.sleep = sleep
        self.retried = 0

    async def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        import httpx

        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.model:
            body["model"] = self.model
        if self.input_type:
            body["input_type"] = self.input_type
        delay = 0.5
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = await self._client.post("/v1/embeddings", json=body)
            except httpx.TransportError as exc:
                if last:
                    raise EmbedFailed(f"cannot reach {self._client.base_url}: {exc}") from None
                wait = delay
            else:
                if r.status_code == 200:
                    return _decode(r.json(), len(texts))
                if r.status_code not in (429, 503) or last:
                    raise _failure(r)
                wait = retry_after(r.headers.get("Retry-After")) or delay
            self.retried += 1
            await self.sleep(wait)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._client.aclose()


def _decode(body: dict[str, Any], n: int) -> np.ndarray[Any, Any]:
    data = sorted(body["data"], key=lambda d: d["index"])
    if len(data) != n:
        raise EmbedFailed(f"the server answered {len(data)} vectors for {n} texts")
    rows = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        if isinstance(d["embedding"], str)
        else np.asarray(d["embedding"], dtype=np.float32)
        for d in data
    ]
    return np.stack(rows).astype(np.float32, copy=False)


def _failure(r: Any) -> EmbedFailed:
    try:
        err = r.json().get("error", {})
        message = str(err.get("message") or r.text)
    except ValueError:
        message = r.text[:500]
    m = _ITEM.search(message)
    return EmbedFailed(
        f"the server answered {r.status_code}: {message}",
        status=r.status_code,
        item=int(m.group(1)) if m else None,
    )


class LocalEmbedder:
    """The server's own path in this process, without HTTP: the serving core that the
    server's lifespan builds (:meth:`~embedhost.core.Core.build`: model registry with its
    tokenizers, prompts and engine workers, the embedding cache, the service).
    ``config``: a server config file (its models and cache); without it, the built-in
    default model."""

    def __init__(
        self, config: Path | None = None, *, model: str | None = None, input_type: str | None = None
    ) -> None:
        self.config = config
        self.model = model
        self.input_type = input_type
        self._core: Core | None = None

    @property
    def core(self) -> Core:
        if self._core is None:
            raise CorpusError("the local embedder has not started")
        return self._core

    async def start(self, timeout: float = 600.0) -> None:
        from embedhost.config import load_settings
        from embedhost.core import Core
        from embedhost.errors import EmbedhostError

        try:
            settings = load_settings(self.config)
            core = self._core = Core.build(settings)
            core.start()
            handle = core.service.resolve(self.model)  # an unknown model fails here
        except EmbedhostError as exc:
            raise CorpusError(exc.message) from None
        deadline = time.monotonic() + timeout
        while handle.status != "ready":
            if handle.status == "failed" or time.monotonic() > deadline:
                reason = handle.reason or f"not ready in {timeout:.0f}s"
                raise CorpusError(f"model {handle.ref} did not load: {reason}")
            await asyncio.sleep(0.05)

    async def embed(self, texts: list[str]) -> np.ndarray[Any, Any]:
        from embedhost.errors import STATUS, EmbedhostError
        from embedhost.service import EmbedOptions

        try:
            service = self.core.service
            handle = service.resolve(self.model)
            result = await service.embed(handle, texts, EmbedOptions(input_type=self.input_type))
        except EmbedhostError as exc:
            m = _ITEM.search(exc.message)
            raise EmbedFailed(
                exc.message, status=STATUS.get(type(exc)), item=int(m.group(1)) if m else None
            ) from None
        return np.asarray(result.vectors, dtype=np.float32)

    async def close(self) -> None:
        if self._core is not None:
            await self._core.stop(10.0)


def local_answer(
    texts: list[str], config: Path | None, model: str | None, input_type: str | None
) -> dict[str, Any]:
    """``embedhost embed --local TEXT...``: an OpenAI-shaped answer, computed here."""

    async def go() -> dict[str, Any]:
        embedder = LocalEmbedder(config, model=model, input_type=input_type)
        try:
            await embedder.start()
            vectors = await embedder.embed(texts)
        finally:
            await embedder.close()
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
            "model": model or "default",
        }

    return asyncio.run(go())

"""A trivial OpenAI-style embeddings server (raw ASGI, no framework, a fixed answer), to
measure what ``embedhost loadtest`` itself sustains: bench/loadtest_client.py.

Run:  python bench/stub_server.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

BODY = (
    b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}],'
    b'"model":"stub","usage":{"prompt_tokens":1,"total_tokens":1}}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body, as a real server would
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="off",
    )

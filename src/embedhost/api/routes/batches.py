"""OpenAI's Batch API for embeddings: ``/v1/files`` and ``/v1/batches``.

Files and batches belong to the API key that made them (every caller is one owner when
the server runs without keys); another key's ids answer 404. Every route needs the
``embed`` scope. The work is :class:`~embedhost.jobs.runner.Jobs`'s; these routes parse
and shape only.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from embedhost.api.context import context_of
from embedhost.api.deps import EmbedAdmission
from embedhost.errors import InvalidRequest, NotFound, PayloadTooLarge
from embedhost.jobs.runner import Jobs
from embedhost.protocol import ErrorResponse

# Every route answers OpenAI's error body: a bad field (400), no key (401), another key's
# or an unknown id (404), an upload over its limit (413), overload (429, 503).
router = APIRouter(
    tags=["batches"],
    responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 503)},
)


def _jobs(request: Request) -> Jobs:
    jobs = context_of(request).jobs
    if jobs is None:
        raise NotFound("the Batch API is turned off here (jobs.enabled)")
    return jobs


class BatchCreate(BaseModel):
    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def _copy_upload(src: Any, dest: Path, limit: int) -> int:
    """Copy the upload into the store's directory, counting against ``limit``."""
    size = 0
    with dest.open("wb") as out:
        while block := src.read(1 << 20):
            size += len(block)
            if size > limit:
                raise PayloadTooLarge(
                    f"the file is larger than the limit of {limit} bytes (jobs.max_file_bytes)",
                    param="file",
                )
            out.write(block)
    return size


@router.post("/v1/files", summary="Upload a batch input file (JSONL)")
async def create_file(
    admission: EmbedAdmission,
    request: Request,
    file: UploadFile,
    purpose: Annotated[str, Form()],
) -> dict[str, Any]:
    jobs = _jobs(request)
    if purpose != "batch":
        raise InvalidRequest(
            "purpose must be 'batch' (the only purpose served here)", param="purpose"
        )
    store = await jobs.store()
    fd, name = tempfile.mkstemp(dir=store.work_dir, prefix="upload-")
    tmp = Path(name)
    try:
        await asyncio.to_thread(_close_and_copy, fd, file, tmp, jobs.config.max_file_bytes)
        rec = await jobs.add_file(admission.key_id, tmp, file.filename or "upload.jsonl", purpose)
    finally:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
    return rec.to_openai()


def _close_and_copy(fd: int, file: UploadFile, dest: Path, limit: int) -> None:
    os.close(fd)
    _copy_upload(file.file, dest, limit)


@router.get("/v1/files", summary="Files, newest first")
async def list_files(
    admission: EmbedAdmission,
    request: Request,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> dict[str, Any]:
    recs, more = await _jobs(request).files(admission.key_id, purpose, after, limit)
    return _page([r.to_openai() for r in recs], more)


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/v1/files/{file_id}", summary="A file's record")
async def get_file(admission: EmbedAdmission, request: Request, file_id: str) -> dict[str, Any]:
    return (await _jobs(request).file(file_id, admission.key_id)).to_openai()


@router.get(
    "/v1/files/{file_id}/content",
    summary="A file's content",
    response_class=FileResponse,
    responses={200: {"description": "The file, JSONL", "content": {"application/jsonl": {}}}},
)
async def file_content(admission: EmbedAdmission, request: Request, file_id: str) -> FileResponse:
    path = await _jobs(request).file_content(file_id, admission.key_id)
    return FileResponse(path, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}", summary="Delete a file")
async def delete_file(admission: EmbedAdmission, request: Request, file_id: str) -> dict[str, Any]:
    await _jobs(request).delete_file(file_id, admission.key_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("/v1/batches", summary="Create a batch (endpoint /v1/embeddings)")
async def create_batch(
    admission: EmbedAdmission, request: Request, body: BatchCreate
) -> dict[str, Any]:
    rec = await _jobs(request).create(
        admission.key_id, body.input_file_id, body.endpoint, body.completion_window, body.metadata
    )
    return rec.to_openai()


@router.get("/v1/batches/{batch_id}", summary="A batch")
async def get_batch(admission: EmbedAdmission, request: Request, batch_id: str) -> dict[str, Any]:
    return (await _jobs(request).get(batch_id, admission.key_id)).to_openai()


@router.get("/v1/batches", summary="Batches, newest first")
async def list_batches(
    admission: EmbedAdmission,
    request: Request,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    recs, more = await _jobs(request).list(admission.key_id, after, limit)
    return _page([r.to_openai() for r in recs], more)


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(
    admission: EmbedAdmission, request: Request, batch_id: str
) -> dict[str, Any]:
    return (await _jobs(request).cancel(batch_id, admission.key_id)).to_openai()

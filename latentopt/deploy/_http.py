"""HTTP helpers of :mod:`.app`: the API's error, its JSON answer, bounded request bodies."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

__all__ = ["ApiError"]


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json_error(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers=headers)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"request body of {declared} bytes exceeds the "
                                             f"limit of {limit} bytes")
    chunks: list[bytes] = []

    async def receive() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large",
                               f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, "timeout", f"the request body did not arrive within "
                                       f"{timeout:.0f} s") from None
    except ClientDisconnect:
        raise ApiError(400, "truncated", "the client disconnected before the end of the "
                                         "request body") from None
    body = b"".join(chunks)
    if declared is not None and len(body) != int(declared):
        raise ApiError(400, "truncated", "request body is shorter than its Content-Length")
    return body


def _same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())

"""Errors in OpenAI's JSON shape, so that OpenAI clients raise their usual exception classes.

Every failure answers ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status a user can act on.
A 500 means a bug in the server: it is logged with its traceback, and the client gets a clean message. A 504
(code ``"timeout"``) means the request ran past its deadline (its ``timeout``, or the server's ``--timeout``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..deadline import DeadlineExceeded

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}


class ErrorDetail(BaseModel):
    """What went wrong, in OpenAI's error shape."""

    message: str = Field(description="What was wrong and what to send instead.")
    type: str = Field(description='"invalid_request_error", "authentication_error", "not_found_error", ...')
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description='Machine-readable code ("model_not_found", "invalid_api_key", ...).')


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


_WHEN = {
    400: "The body is not a JSON object, or the request cannot be served as sent (the message says why).",
    401: "The server has an API key and the request's 'Authorization: Bearer <key>' is missing or wrong.",
    404: "The model is not the one served, or the path does not exist.",
    413: "The body or its text is over the server's limits.",
    422: "A field has the wrong type or is out of range.",
    429: "The server is full; retry after the 'Retry-After' seconds.",
    500: "A bug in the server (logged with its traceback there).",
    503: "The server (a replica) is starting, stopping or unreachable; retry.",
    504: "The request ran past its deadline (its 'timeout', or the server's --timeout); code 'timeout'.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting ``statuses`` as `ErrorResponse`s, for a route's decorator."""
    return {status: {"model": ErrorResponse, "description": _WHEN[status]} for status in statuses}


class APIError(Exception):
    """An error answered in OpenAI's shape.

    Parameters
    ----------
    status : int
        HTTP status.
    message : str
        What was wrong and what to send instead.
    code : str, optional
        Machine-readable code (``"model_not_found"``, ``"invalid_api_key"``, ...).
    param : str, optional
        The request field at fault.
    headers : dict, optional
        Extra response headers (``Retry-After`` with 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def deadline_error(error: DeadlineExceeded) -> APIError:
    """The 504 a request gets when it ran past its deadline (``timeout``, or the server's ``--timeout``)."""
    return APIError(504, str(error), code="timeout", param="timeout")


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` for ``status``."""
    kind = _TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _validation_response(error: RequestValidationError) -> JSONResponse:
    problems = list(error.errors())
    if any(problem.get("type") == "json_invalid" for problem in problems):
        detail = problems[0].get("ctx", {}).get("error", "") if problems else ""
        reason = f" ({detail})" if detail else ""
        message = f"The request body is not valid JSON{reason}. Send a JSON object."
        return APIError(400, message, code="invalid_json").response()
    first = problems[0] if problems else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    messages = []
    for problem in problems[:5]:
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body"
        messages.append(f"{where}: {problem.get('msg', 'invalid value')}")
    if not location:  # the body as a whole: missing, or not a JSON object (or sent without a JSON content type)
        message = "The request body must be a JSON object, sent with 'Content-Type: application/json'."
        return APIError(400, message, code="invalid_json").response()
    return APIError(422, "Invalid request: " + "; ".join(messages), code="invalid_value", param=param).response()


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise into OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"No route {request.method} {request.url.path}. See /docs for the endpoints."
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        else:
            message = str(error.detail)
        code = "request_too_large" if error.status_code == 413 else None
        return JSONResponse(
            error_body(error.status_code, message, code=code), status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        message = f"Internal server error ({type(error).__name__}); the server log has the details."
        return JSONResponse(error_body(500, message, code="internal_error"), status_code=500)

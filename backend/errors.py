"""API errors and the one JSON shape every error response has.

The body is `{"detail": message, "error": {"message", "type", "param", "code"}}`: `detail` is what FastAPI
clients read, `error` is what OpenAI clients read, and `param` names the offending field so a client (or a
person) can tell what to fix. Validation errors from FastAPI are rewritten into the same shape, and so are
database outages: a database that cannot be reached (or has no free connection) is a 503 the client may retry,
not a server error.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sql_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("nanoprime.errors")

DATABASE_RETRY_AFTER_S = 5
# Raised when the database is down, unreachable, restarting, or out of pooled connections.
DATABASE_UNAVAILABLE = (sql_errors.OperationalError, sql_errors.InterfaceError, sql_errors.TimeoutError)


class APIError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers


class BadRequest(APIError):
    pass


class Unprocessable(APIError):
    """A well-formed value outside what this server allows (a limit from its settings)."""

    status_code = 422


class NotFound(APIError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(APIError):
    status_code = 409
    error_type = "conflict_error"


class Busy(APIError):
    status_code = 429
    error_type = "rate_limit_error"


class Unavailable(APIError):
    status_code = 503
    error_type = "service_unavailable"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error response's body, as documented in the OpenAPI schema."""

    detail: str
    error: ErrorDetail


# For FastAPI(responses=...): every route may answer a 4xx or a 503 in this shape (documenting "4XX" also
# replaces FastAPI's default 422 schema, which is not the shape this API sends).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "The request cannot be carried out as sent"},
    503: {"model": ErrorBody, "description": "The model is loading or the database is unavailable"},
}


def error_body(message: str, error_type: str, param: str | None = None) -> dict[str, Any]:
    return {
        "detail": message,
        "error": {"message": message, "type": error_type, "param": param, "code": None},
    }


def error_response(
    status: int, message: str, error_type: str, param: str | None = None, headers=None
) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, param), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    """("body", "settings", "temperature") -> "settings.temperature"; list indices become [i]."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    problems = error.errors()
    for problem in problems:
        if problem.get("type") == "json_invalid":
            reason = problem.get("ctx", {}).get("error", "")
            return error_response(
                400, f"body: the request body is not valid JSON ({reason})", "invalid_request_error", "body"
            )
    messages = []
    for problem in problems:
        field = _field_name(tuple(problem.get("loc", ())))
        kind = problem.get("type")
        text = problem.get("msg", "invalid value").removeprefix("Value error, ")
        if kind == "missing":
            text = "field required"
        elif kind == "extra_forbidden":
            text = "unknown field"
        elif field == "body" and kind in ("model_attributes_type", "dict_type", "model_type"):
            text = "the request body must be a JSON object (with Content-Type: application/json)"
        messages.append(f"{field}: {text}")
    first = _field_name(tuple(problems[0].get("loc", ()))) if problems else None
    return error_response(422, "; ".join(messages), "invalid_request_error", first)


async def _api_error(_request: Request, error: APIError) -> JSONResponse:
    return error_response(error.status_code, error.message, error.error_type, error.param, error.headers)


async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    param = "body" if error.status_code == 413 else None
    return error_response(error.status_code, str(error.detail), kind, param, getattr(error, "headers", None))


def database_problem(error: Exception) -> str:
    """The driver's one-line reason (SQLAlchemy's own text adds the statement and its parameters)."""
    reason = getattr(error, "orig", None) or error
    return f"{type(reason).__name__}: {reason}".splitlines()[0]


def database_unavailable() -> Unavailable:
    return Unavailable(
        "the database is unavailable right now; the request was not carried out, retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    log.warning(
        "database unavailable for %s %s: %s", request.method, request.url.path, database_problem(error)
    )
    return await _api_error(request, database_unavailable())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for kind in DATABASE_UNAVAILABLE:
        app.add_exception_handler(kind, _database_unavailable)

"""Operations: /health for probes, /metrics for Prometheus, /api/models for the UI's model card."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from backend.db import ping
from backend.routes.deps import get_runtime
from backend.runtime import FAILED, LOADING, ModelInfo, Runtime

router = APIRouter(tags=["ops"])

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class Health(BaseModel):
    status: Literal["ok", "loading", "unavailable"]
    model: str
    database: str
    model_name: str | None
    message: str


HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "Ready"},
    503: {"model": Health, "description": "Not ready (model loading or failed, database down)"},
}


@router.get("/health", response_model=Health, responses=HEALTH_RESPONSES)
async def health(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """200 when the model is loaded and the database answers; 503 with the reason otherwise."""
    db_error = await run_in_threadpool(ping, request.app.state.db_engine)
    problems = []
    if runtime.status == LOADING:
        model = "loading"
        problems.append("the model is still loading")
    elif runtime.status == FAILED:
        model = f"failed: {runtime.error}"
        problems.append(f"the model could not be loaded ({runtime.error})")
    else:
        model = "ready"
    database = "ok" if db_error is None else f"down: {db_error}"
    if db_error is not None:
        problems.append(f"the database is unreachable ({db_error})")
    if not problems:
        status = "ok"
    else:
        status = "loading" if runtime.status == LOADING and db_error is None else "unavailable"
    body = {
        "status": status,
        "model": model,
        "database": database,
        "model_name": runtime.info.name if runtime.info else None,
        "message": "ready" if not problems else "; ".join(problems),
    }
    return JSONResponse(body, status_code=200 if not problems else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/models")
def models(runtime: RuntimeDep) -> dict[str, list[dict[str, Any]]]:
    """The served model: size, context, cache cost per token, weights hash and the model card's figures."""
    info = runtime.require_ready()
    return {"models": [model_entry(info)]}


def model_entry(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "parameters": info.parameters,
        "context_length": info.context_length,
        "cache_bytes_per_token": info.cache_bytes_per_token,
        "state_bytes_per_sequence": info.state_bytes_per_sequence,
        "weights_sha256": info.weights_sha256,
        "card": flat_figures(info.card),
        "config": info.config,
    }


def flat_figures(card: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool | None]:
    """The card's values as one flat mapping of scalars ("eval.loss": 2.1), the way the UI lists them."""
    flat: dict[str, str | int | float | bool | None] = {}
    for key, value in card.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_figures(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = ", ".join(str(item) for item in value)
        else:
            flat[name] = value
    return flat

"""Run the app under uvicorn: `serve()` is what `nanoprime serve` calls (also `python -m backend.server`)."""

from __future__ import annotations

import logging

import uvicorn

from backend.app import create_app
from backend.settings import Settings


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=15,
    )


if __name__ == "__main__":
    serve()

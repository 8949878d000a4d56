"""FastAPI dependencies: the app's shared objects, created once by create_app and kept on app.state."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from backend.runtime import Runtime
from backend.settings import Settings
from backend.turns import Turns


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def get_turns(request: Request) -> Turns:
    return request.app.state.turns

"""Server settings: the one place that reads the environment.

Every value comes from an environment variable with the `NANOPRIME_` prefix (or a `.env` file); the database
URL also answers to the conventional `DATABASE_URL`. Modules get a `Settings` object, never os.environ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NANOPRIME_", env_file=".env", extra="ignore")

    model_dir: Path = Path("models/nanoprime-pocket")
    device: str = "cpu"
    database_url: str = Field(
        default="sqlite:///nanoprime.db",
        validation_alias=AliasChoices("NANOPRIME_DATABASE_URL", "DATABASE_URL", "database_url"),
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Origins allowed to call the API from a browser; a comma-separated list in the environment.
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000", "http://127.0.0.1:3000"]
    # When set, every route but /health (and the static UI) needs `Authorization: Bearer <api_key>`.
    api_key: str | None = None
    max_queue: int = Field(default=64, ge=1)
    max_batch_size: int = Field(default=16, ge=1)
    max_new_tokens_limit: int = Field(default=2048, ge=1)
    default_max_new_tokens: int = Field(default=512, ge=1)
    state_cache_bytes: int = Field(default=256 * 2**20, ge=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    web_dir: Path = Path("web_chat/out")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept `a,b` from the environment as well as a list."""
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        """An empty NANOPRIME_API_KEY means no key, not a key that is the empty string."""
        return None if value == "" else value

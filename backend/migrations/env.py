"""Alembic environment: runs migrations on the connection the server hands over (backend.db.migrate), or, from
the alembic command line, on the database named by the server's settings."""

from alembic import context
from sqlalchemy import Connection

from backend.db import create_db_engine
from backend.orm import Base
from backend.settings import Settings

target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    engine = create_db_engine(Settings().database_url)
    with engine.begin() as own_connection:
        run_on(own_connection)
    engine.dispose()

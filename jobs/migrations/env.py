"""Alembic's environment for the job store, run by jobs.schema (no alembic.ini needed).

jobs.schema hands over an open connection in `config.attributes["connection"]`; the
models' metadata is the target, so `python -m jobs.schema revision "msg"` can
autogenerate the next revision from the SQLModel classes in jobs/tables.py.
"""

from alembic import context

from jobs import tables


def render_item(kind, obj, autogen_context):
    """Write SQLModel's own column types as plain SQLAlchemy ones, so revisions need no sqlmodel import."""
    if kind == "type" and type(obj).__name__ == "AutoString":
        return "sa.String()"
    if kind == "type" and isinstance(obj, tables.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=tables.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment of tarea's task store.

Migrations run only through :meth:`tarea.store.SqlStore.migrate`, which hands
over an open connection in ``config.attributes["connection"]`` (no
alembic.ini, no URL in a configparser file). To write the next migration,
autogenerate against a database migrated to head, then clean the result::

    from alembic import command
    from alembic.config import Config
    from tarea.store import SqlStore

    store = SqlStore("sqlite:///var/draft.db")
    store.migrate()
    config = Config()
    config.set_main_option("script_location", "src/tarea/store/migrations")
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, "what changes", autogenerate=True, rev_id="0002")
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tarea.store.tables import Base


def run_migrations() -> None:
    """Run the pending migrations on the connection SqlStore.migrate() passed."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("tarea's migrations run through tarea.store.SqlStore.migrate()")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

"""Persistence: engines, the schema, the lab store, migrations and the status cache.

- `labd.db.database`: the SQLAlchemy engine of SQLite or PostgreSQL.
- `labd.db.schema`: the tables (Alembic's migrations create them).
- `labd.db.store`: every read and write of labs, transitions and events.
- `labd.db.migrate`, `labd.db.revision`: running migrations; checking the schema.
- `labd.db.status`: the cache of lab states the API answers from.
- `labd.db.changes`: PostgreSQL ``LISTEN``, keeping that cache coherent across replicas.
- `labd.db.leadership`: the lock (and the fencing term) of the replica that leads.
"""

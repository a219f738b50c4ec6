"""The store: SQLAlchemy tables, sessions and Alembic migrations. The source of truth."""

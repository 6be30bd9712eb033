"""Persistence: SQLAlchemy 2 async models, Alembic migrations and the store the API uses."""

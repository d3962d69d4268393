"""Storage helpers: SQLAlchemy engines and migrations, atomic file writes, safe paths."""

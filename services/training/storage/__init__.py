"""Training service storage: SQLAlchemy tables (jobs, models) and the file layout under the data root."""

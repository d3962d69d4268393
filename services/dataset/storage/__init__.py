"""Dataset service storage: SQLAlchemy tables (metadata) and the file tree under the data root."""

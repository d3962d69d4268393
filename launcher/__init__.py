"""The launcher: one command that starts the whole platform, supervises it and shuts it down cleanly."""

"""Plumbing shared by every service: settings, logging, tracing, errors, gRPC server, storage helpers."""

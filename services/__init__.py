"""VisionMesh gRPC services: one package per domain, plus `common` for the plumbing they share."""

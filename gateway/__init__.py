"""The gateway around Envoy: Envoy's config rendered from the protos and settings, and the gRPC endpoints
that Envoy cannot provide itself for the shared port (aggregated server reflection and health)."""

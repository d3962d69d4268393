"""Training domain logic: no gRPC here."""

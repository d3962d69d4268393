"""Dataset domain logic: no gRPC here; servicers call these classes and functions."""

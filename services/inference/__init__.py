"""The inference service: detection on images, batches and videos through Triton, result exports, and the
queued task API of the 002 document."""

"""Training service: YOLO training jobs in worker processes, their logs, and the model registry (seed 000)."""

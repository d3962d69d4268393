"""Dataset service: dataset ZIPs, prepared YOLO versions, annotation tasks (seed 000)."""

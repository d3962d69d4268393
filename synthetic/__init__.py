"""What tests and benchmarks share: synthetic data whose truth is known (dataset ZIPs, rendered screenshots, random
SAM weights), the measures scored against it, and a local server for image URLs.

Product code never imports this package (tests/test_docs.py checks it), and it never imports tests/.
"""

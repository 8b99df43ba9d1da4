"""Identify: photo -> every pill found (detector), cropped, named (classifier), with confidence.

`fedray identify PHOTO...` (cli.py), `fedray serve` (serve.py, a local web page) and `fedray
export RUN_DIR` (export.py, ONNX + an on-device profile) share one pipeline (pipeline.py).
"""

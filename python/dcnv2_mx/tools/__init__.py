"""Command-line tools of dcnv2_mx (``python -m dcnv2_mx COMMAND``), apart from the core package."""

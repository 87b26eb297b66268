"""End-to-end runs that notebooks and the CLI call: trace one image, the demo."""

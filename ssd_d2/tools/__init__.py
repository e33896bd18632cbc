"""Command line tools of ssd_d2 (``python -m ssd_d2.tools.<name>``)."""

"""Load benchmark of the service against the ceiling of its stack: `python bench/run.py`."""

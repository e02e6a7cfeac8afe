"""Benchmarks behind ``python -m backend bench <suite>``; each module has ``run(...)`` printing a table."""

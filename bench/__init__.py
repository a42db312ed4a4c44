"""Benchmarks for edgevol against plain command-line baselines (run with ``bench/run.py``, never by pytest)."""

"""The Calo Jobs benchmark suite: `python bench/run.py` (see bench/README.md).

A benchmark, not a test: nothing here asserts on speed, and the test suite never imports it.
"""

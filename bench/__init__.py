"""Benchmarks of the notify pipeline (issue #8): ``python -m bench [--quick]``."""

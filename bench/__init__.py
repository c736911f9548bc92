"""Benchmarks (issue #9): `python -m bench` or `make bench`; see bench/__main__.py."""

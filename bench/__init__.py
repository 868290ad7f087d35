"""Benchmarks: each compares against a baseline measured in the same run
(``python -m bench.<name>``); figures go to docs/benchmarks.md."""

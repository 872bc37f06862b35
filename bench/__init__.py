"""Benchmark inputs: scenario files and jinja2 scenario templates live in ``bench/scenarios``."""

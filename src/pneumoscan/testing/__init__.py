"""Helpers for tests and benchmarks: synthetic X-ray images, tiny models and an app-server harness.
Part of the package so that tests and benchmarks import them without path tricks.
"""

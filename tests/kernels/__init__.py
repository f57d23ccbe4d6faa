"""Kernel tests: every backend against the naive oracle."""

"""Helpers and fixtures shared across the tests, the chaos run and the benchmarks.

A test imports helpers from here, never from another test module or another
directory's conftest. Fixtures that several directories use are defined here
and registered once, by ``pytest_plugins`` in ``tests/conftest.py``.
"""

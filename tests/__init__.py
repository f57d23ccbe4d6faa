"""Test suite (a package so that tests can import shared helpers: ``from tests.helpers import ...``)."""

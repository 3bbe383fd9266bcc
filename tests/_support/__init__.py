"""Helpers shared by the test packages (imported as ``_support``: pytest puts ``tests/`` on the path through the
root conftest, which has no ``__init__.py`` beside it)."""

"""Tests of langchain-finch (a package, so this conftest never shadows the root tests/conftest.py)."""

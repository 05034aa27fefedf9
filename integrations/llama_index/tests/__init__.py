"""Tests of llama-index-finch (a package, so this conftest never shadows the root tests/conftest.py)."""

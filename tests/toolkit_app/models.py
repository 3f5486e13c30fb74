"""Test-only models for the toolkit's tests (added by helpers as the toolkit grows)."""

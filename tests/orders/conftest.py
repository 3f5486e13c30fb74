"""The orders tests use `live_gateway` and `_session_gateway` from tests/conftest.py (the
gateway's URL is also in `live_env`, so live web and worker processes reach it)."""

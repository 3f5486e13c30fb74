"""The toolkit tests use `worker_pool` and the other fixtures of tests/conftest.py."""

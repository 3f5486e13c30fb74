"""Web Push for the notifications app: a model-free library the delivery tasks call.

- `keys`: VAPID key checks and the development key pair (config/settings.py imports it, so
  it imports nothing of Django's but its exceptions), browser subscription key checks.
- `sender`: `push_send(...)`, one encrypted, VAPID-signed push, classified as delivered,
  gone, transient or failed.

Import from the submodules; this package's __init__ stays empty so that settings can
import `keys` without loading the HTTP and crypto stack.
"""

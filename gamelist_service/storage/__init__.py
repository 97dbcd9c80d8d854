"""Redis: the store (the only Redis code), URLs, the embedded redis-server, per-instance state."""

"""gamelist-service: a live game list in Redis, pushed to every Socket.IO client when it changes."""

from __future__ import annotations

__version__ = '0.1.0'

__all__ = ['__version__']

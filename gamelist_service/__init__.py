"""gamelist-service: a live game list in Redis, pushed to every Socket.IO client when it changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .producers.updater import GameListUpdater

__version__ = '0.1.0'

__all__ = ['GameListUpdater', '__version__']


def __getattr__(name: str) -> Any:
    # `from gamelist_service import GameListUpdater` without importing Redis for every command of the CLI
    if name == 'GameListUpdater':
        from .producers.updater import GameListUpdater  # noqa: PLC0415

        return GameListUpdater
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

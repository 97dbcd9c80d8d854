"""serve: claim the instance directory, start the embedded Redis if asked, run Sanic, then undo it all in order."""

from __future__ import annotations

import logging

from . import instances
from .app import create_app
from .embedded import EmbeddedRedis
from .settings import Settings

logger = logging.getLogger('gamelist_service.server')


def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM; returns the exit code."""
    server = settings.server
    directory = instances.claim(settings.redis.state_dir, server.port, settings.source)
    embedded: EmbeddedRedis | None = None
    try:
        if settings.redis.embedded:
            embedded = EmbeddedRedis(directory, persistence=settings.redis.persistence)
            redis_url = embedded.start()
        else:
            redis_url = settings.redis.url
        instances.publish(directory, server.port, settings.source, redis_url)
        app = create_app(settings, redis_url)
        app.run(
            host=server.host,
            port=server.port,
            single_process=True,
            motd=False,
            access_log=False,
            auto_reload=False,
            debug=False,
        )
    finally:
        if embedded is not None:
            embedded.stop()
        instances.release(directory)
    return 0

"""Sessions whose client stopped answering pings, found by a sweep a few times a second instead of one wake-up per
session.

python-engineio's service task (AsyncServer._service_task) visits one session at a time, and between two visits
awaits asyncio.wait_for(event.wait(), ping_timeout / sessions): at 15,000 sessions that is a task, a timer and a
TimeoutError 750 times a second in every worker, for a check that finds nothing nearly always. Six workers holding
100,000 clients spent about a fifth of a core on it between broadcasts (bench/CAPACITY.md), and every wake-up took a
turn of the loop a broadcast was waiting for.

SessionSweep does the same checks with the same outcome: a session closed meanwhile is dropped from the server's
table, and one whose last ping has waited longer than ping_timeout for its pong is closed through its own
check_ping_timeout() (python-engineio's log line, its CLOSE packet, reason PING_TIMEOUT). It wakes every TICK_S and
visits a slice of the sessions, so that each is visited once per PASS_S (at most ping_timeout): a client that went
away is found at most ping_timeout + PASS_S after its last ping, where python-engineio's pass took ping_timeout.
Healthy sessions cost a few attribute reads each, in the sweep's own turn of the loop. It stops as python-engineio's
does: shutdown() sets service_task_event and awaits the task.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

logger = logging.getLogger('gamelist_service.transport.sweep')

TICK_S = 0.25  # between two slices
PASS_S = 5.0  # every session visited once in this long (or in ping_timeout, if that is shorter)


def check() -> list[str]:
    """What the sweep needs of python-engineio and it lacks: the service task it replaces and the session's check."""
    import engineio  # noqa: PLC0415 - only the probe builds a server

    missing: list[str] = []
    server = engineio.AsyncServer(async_mode='sanic')
    for name in ('start_service_task', 'service_task_event', 'sockets', 'ping_timeout', 'create_event'):
        if not hasattr(server, name):
            missing.append(f'engineio.AsyncServer().{name}')
    if not callable(getattr(server, '_service_task', None)):
        missing.append('engineio.AsyncServer._service_task')
    return missing


class SessionSweep:
    """Replaces an engineio AsyncServer's service task (install); run() is that task."""

    def __init__(self, eio: Any, tick_s: float = TICK_S, pass_s: float = PASS_S) -> None:
        self.eio = eio
        self.tick_s = tick_s
        self.pass_s = pass_s
        self.closed_for_timeout = 0  # sessions this sweep closed because their pong did not come

    def install(self) -> None:
        """From now on this server's service task (started at its first session) is run(), not python-engineio's."""
        self.eio._service_task = self.run

    async def run(self) -> None:
        eio = self.eio
        stop = eio.service_task_event = eio.create_event()
        queue: list[Any] = []
        at = per_tick = 0
        while not stop.is_set():
            if at >= len(queue):  # a new pass over the sessions there are now
                queue, at = list(eio.sockets.values()), 0
                ticks_per_pass = max(1.0, min(self.pass_s, eio.ping_timeout) / self.tick_s)
                per_tick = max(1, math.ceil(len(queue) / ticks_per_pass))
            end = min(at + per_tick, len(queue))
            try:
                await self.visit(queue[at:end])
            except Exception:  # as python-engineio's task: log it and go on
                logger.exception('session sweep failed; it goes on')
            at = end
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.tick_s)
            except TimeoutError:
                continue

    async def visit(self, sessions: list[Any]) -> None:
        """Drop the closed sessions from the server's table; close those whose pong is overdue."""
        eio = self.eio
        table = eio.sockets
        timeout = eio.ping_timeout
        now = time.time()
        for sock in sessions:
            if sock.closed:
                if table.get(sock.sid) is sock:
                    del table[sock.sid]
                continue
            if sock.closing:
                continue
            last_ping = sock.last_ping
            if last_ping and now - last_ping > timeout:
                self.closed_for_timeout += 1
                await sock.check_ping_timeout()  # python-engineio closes it, with its log line and reason

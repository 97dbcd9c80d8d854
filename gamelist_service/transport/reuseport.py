"""Several workers, each accepting from a listening socket of its own: the kernel spreads new connections evenly.

Sanic 25.12 binds one socket in the main process (`configure_socket`, unless `prepare(sock=...)` gave one) and
hands it to every worker (multiprocessing passes the descriptor); each worker listens and accepts on it
(`loop.create_server(sock=...)`). One queue for all: whichever worker wakes first takes the connection, so the split
follows the scheduler, not the load (46/54 % at 2 workers, worse at 6: bench/SPREAD.md). Sanic's `reuse_port` is
only honoured for secondary apps with their own host and port, and there too the main process binds first.

With SO_REUSEPORT (Linux 3.9+) every listening socket bound to the same address has a queue of its own, and the
kernel picks one for each new connection by a hash of its addresses and ports. Here:

- the main process binds the socket itself, with SO_REUSEADDR and SO_REUSEPORT, and gives it to Sanic
  (`prepare(sock=...)`, a public parameter); Sanic uses a given socket as it is and never listens on it in the main
  process (check() verifies that), so it holds the port and takes no connection: the kernel spreads only over
  sockets that listen;
- each worker, before Sanic's server starts, binds a new socket to the same address with the same options and puts
  it in place of the descriptor it inherited (`dup2`): Sanic listens on the worker's own socket with the configured
  backlog, accepts from it, and closes it at shutdown, exactly as it did with the shared one.

A worker that cannot do its part listens on the inherited socket, which has SO_REUSEPORT too: it joins the others'
group and the spread still holds. Nothing here is needed for one process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import sys
from collections.abc import Iterable
from typing import Any

Address = tuple[Any, ...]  # what getsockname() returns: (host, port) or (host, port, flowinfo, scope_id)


def check() -> list[str]:
    """What this needs of Sanic and Sanic lacks: the main process must not listen on a socket prepare() was given."""
    try:
        from sanic.server.socket import configure_socket  # noqa: PLC0415 - an internal: only where it is probed
    except ImportError as exc:
        return [f'sanic.server.socket.configure_socket: {type(exc).__name__}: {exc}']
    with socket.socket() as given:
        given.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        given.bind(('127.0.0.1', 0))
        settings: dict[str, Any] = {'sock': given, 'unix': None, 'backlog': 1, 'host': None, 'port': None}
        try:
            used = configure_socket(settings)
        except Exception as exc:  # noqa: BLE001 - any failure means: do not rely on it
            return [f'sanic.server.socket.configure_socket: {type(exc).__name__}: {exc}']
        if used is not given or given.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return ['sanic.server.socket.configure_socket: a socket given to prepare(sock=) is not used as it is']
    return []


def unavailable() -> str | None:
    """Why the workers cannot have a listening socket each here, or None when they can."""
    if not sys.platform.startswith('linux'):
        return f'{sys.platform} does not spread connections over SO_REUSEPORT sockets'
    option = getattr(socket, 'SO_REUSEPORT', None)
    if option is None:
        return 'this Python has no socket.SO_REUSEPORT'
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError as exc:
        return f'the kernel refused SO_REUSEPORT ({exc})'
    missing = check()
    return f'Sanic does not use a given socket as it is ({"; ".join(missing)})' if missing else None


def _family(host: str) -> socket.AddressFamily:
    """As Sanic's bind_socket chooses it: an IP address's own family, a host name IPv4."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def bind_main(host: str, port: int) -> socket.socket:
    """The main process's socket: bound to host:port with SO_REUSEADDR and SO_REUSEPORT, not listening.

    A port something already listens on raises OSError (EADDRINUSE), as Sanic's own bind does: a second service on
    the port is refused, never let into the workers' group (the probe has SO_REUSEADDR only, so the connections of
    an earlier run in TIME_WAIT do not stand in the way).
    """
    family = _family(host)
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]  # the same port, or the one the kernel chose for 0
    sock = socket.socket(family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)  # as Sanic's own
    return sock


def _inherited(address: Address, fds: Iterable[int]) -> list[int]:
    """The descriptors among fds that are the main process's socket: TCP, bound to address, SO_REUSEPORT, not
    listening (Sanic may hold it under more than one)."""
    found = []
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=fd)
        except (OSError, ValueError):
            continue
        try:
            if (
                probe.family in (socket.AF_INET, socket.AF_INET6)
                and probe.type == socket.SOCK_STREAM
                and probe.getsockname() == address
                and probe.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
                and not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            ):
                found.append(fd)
        except OSError:
            pass
        finally:
            probe.detach()
    return found


def take_own(address: Address, fds: Iterable[int] | None = None) -> str | None:
    """In a worker, before Sanic listens: its own socket, bound to address, in place of the main process's.

    :param address: the main process's socket's getsockname().
    :param fds: where to look for it (default: every descriptor of this process).
    :returns: None when done, else why not (the worker then listens on the inherited socket).
    """
    address = tuple(address)
    if fds is None:
        fds = [int(name) for name in os.listdir('/proc/self/fd')]
    targets = _inherited(address, fds)
    if not targets:
        return f'no inherited socket bound to {address[:2]} with SO_REUSEPORT'
    template = socket.socket(fileno=targets[0])
    try:
        own = socket.socket(template.family, template.type, template.proto)
        try:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if template.family == socket.AF_INET6:
                v6only = template.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                own.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            own.bind(address)
            for fd in targets:
                # Sanic's socket object keeps its descriptor, which now is this worker's own socket; not
                # inheritable: a child of the worker must not hold a listening socket nobody accepts from
                os.dup2(own.fileno(), fd, inheritable=False)
        finally:
            own.close()
    except OSError as exc:
        return f'binding a socket of its own to {address[:2]} failed ({exc})'
    finally:
        template.detach()
    return None

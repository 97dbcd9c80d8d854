"""Connect and disconnect in O(1): python-socketio's room bookkeeping without its walk over every room.

python-socketio's BaseManager.basic_disconnect finds the rooms of the leaving client by looking into every room of
the namespace, and every client has a room of its own (its sid). One disconnect costs O(clients) and a mass
disconnect (a network blip, a load-balancer restart, a shutdown) O(clients²) (the profile: bench/README.md, Storms).

IndexedAsyncManager knows the rooms of each client without a walk: every client is in the namespace's room None and
in its own room, and any other room it enters is noted in a reverse index (sid -> rooms), which stays empty unless
the application uses rooms (this service does not): no memory per connection for it. The pending-connect and
pending-disconnect bookkeeping stays python-socketio's.

A client's own room is not a bidict of its own either: its one member is the client, whose eio sid the namespace's
room None already holds (python-socketio's is_sid_room looks there too). python-socketio made one bidict per client
and namespace: about 570 bytes and 8.6 µs each, 1.1 KB and 17 µs for a client of two namespaces. get_participants
answers for it from room None.

It overrides documented-by-code parts of socketio.base_manager.BaseManager (rooms[namespace][room] is a bidict of
sid -> eio_sid); check() verifies them at start, and create_manager falls back to python-socketio's own manager,
logged, when one is missing.
"""

from __future__ import annotations

from typing import Any

import socketio
from socketio import base_manager


def check() -> list[str]:
    """What the index needs of python-socketio and this environment lacks; empty when it can run."""
    missing = [
        f'socketio BaseManager.{name}'
        for name in ('basic_enter_room', 'basic_leave_room', 'basic_disconnect', 'get_rooms', 'pre_connect')
        if not callable(getattr(base_manager.BaseManager, name, None))
    ]
    try:
        manager = IndexedAsyncManager()
        manager.set_server(_Server())
        manager.basic_enter_room('s1', '/', None, eio_sid='e1')
        manager.basic_enter_room('s1', '/', 's1', eio_sid='e1')
        manager.basic_enter_room('s1', '/', 'lobby')
        if manager.get_rooms('s1', '/') != ['s1', 'lobby'] or manager.rooms['/'][None].get('s1') != 'e1':
            missing.append('socketio BaseManager.rooms[namespace][room] is not a sid -> eio_sid map')
        if not isinstance(getattr(manager.rooms['/'][None], '_fwdm', None), dict):
            missing.append("bidict's forward dict (_fwdm), which python-socketio's get_participants copies")
        if list(manager.get_participants('/', 's1')) != [('s1', 'e1')] or not manager.is_sid_room('/', 's1'):
            missing.append("socketio BaseManager.is_sid_room does not look at the namespace's room None")
        for name in ('callbacks', 'pending_connect', 'pending_disconnect'):
            if not isinstance(getattr(manager, name, None), dict):
                missing.append(f'socketio BaseManager().{name}')
        manager.basic_disconnect('s1', '/')
        if manager.rooms or manager.extra_rooms:
            missing.append('socketio BaseManager keeps rooms after a disconnect')
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means: do not use it
        missing.append(f'probe failed: {type(exc).__name__}: {exc}')
    return missing


class _Server:
    """Enough of a server for set_server() in check()."""

    packet_class = socketio.packet.Packet


class IndexedAsyncManager(socketio.AsyncManager):  # type: ignore[misc]
    """socketio.AsyncManager whose disconnect looks up the client's rooms instead of walking every room."""

    def __init__(self) -> None:
        super().__init__()
        # (namespace, sid) -> the rooms the client entered besides None and its own
        self.extra_rooms: dict[tuple[str, str], set[Any]] = {}

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        if room is not None and room == sid:
            if namespace not in self.rooms or sid not in self.rooms[namespace].get(None, ()):
                raise ValueError('sid is not connected to requested namespace')
            return  # its own room: room None holds it (see the module docstring)
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None:
            self.extra_rooms.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        if room is not None and room == sid:
            return  # its own room: it is left with room None
        super().basic_leave_room(sid, namespace, room)
        if room is not None and room != sid:
            rooms = self.extra_rooms.get((namespace, sid))
            if rooms is not None:
                rooms.discard(room)
                if not rooms:
                    del self.extra_rooms[(namespace, sid)]

    def get_participants(self, namespace: str, room: Any) -> Any:
        """(sid, eio sid) of the clients in room, or in any of the rooms given as a list; a client's own room is its
        entry in room None."""
        ns = self.rooms.get(namespace, {})
        everyone = ns.get(None, {})
        if hasattr(room, '__len__') and not isinstance(room, str):
            participants: dict[str, str] = {}
            for name in room:
                if name in ns:
                    participants.update(ns[name]._fwdm)
                elif name in everyone:
                    participants[name] = everyone[name]
        elif room in ns:
            participants = ns[room]._fwdm.copy()  # as python-socketio: a dict's copy (dict(items) is 20x slower)
        elif room in everyone:
            participants = {room: everyone[room]}
        else:
            participants = {}
        yield from participants.items()

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        for room in (*self.extra_rooms.pop((namespace, sid), ()), None):
            super().basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The rooms a client is in (its own first), without a walk."""
        if sid not in self.rooms.get(namespace, {}).get(None, {}):
            return []
        return [sid, *sorted(self.extra_rooms.get((namespace, sid), ()), key=str)]

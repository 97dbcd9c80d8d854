"""Smaller per-connection state: the same behaviour with lists in place of deques, and the switch-off."""

from __future__ import annotations

import asyncio
import collections
import logging
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
from sanic.server.websockets.frame import WebsocketFrameAssembler

from gamelist_service.transport import fastpath, slim


async def test_the_small_queue_behaves_as_an_asyncio_queue() -> None:
    queue = slim.small_queue()
    assert isinstance(queue, asyncio.Queue)
    getter = asyncio.get_running_loop().create_task(queue.get())
    await asyncio.sleep(0)
    assert len(queue._getters) == 1 and not queue._getters[0].done()  # type: ignore[attr-defined]  # fastpath._idle
    queue.put_nowait('a')
    assert await getter == 'a'
    for item in ('b', 'c', None):
        await queue.put(item)
    assert [queue.get_nowait() for _ in range(3)] == ['b', 'c', None]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await queue.get()
    assert not queue._getters  # type: ignore[attr-defined]  # the cancelled getter removed itself
    for _ in range(4):  # 'a', 'b', 'c' and None
        queue.task_done()
    await asyncio.wait_for(queue.join(), 1)
    assert isinstance(queue._queue, slim.Slots) and isinstance(queue._finished._waiters, slim.Slots)  # type: ignore[attr-defined]


def test_check_passes_with_the_pinned_libraries() -> None:
    assert slim.check() == []


async def test_trim_replaces_the_idle_structures_and_the_events_still_work() -> None:
    assembler = WebsocketFrameAssembler(None)
    io_proto = SimpleNamespace(_can_write=asyncio.Event(), _data_received=asyncio.Event())
    environ: dict[str, Any] = {'wsgi.input': SimpleNamespace(payload=b'')}
    trimmer = slim.Trimmer({'eio-1': environ})
    trimmer.trim(SimpleNamespace(sid='eio-1'), SimpleNamespace(assembler=assembler, io_proto=io_proto))
    assert assembler.completed_queue is None
    events = [assembler.message_complete, assembler.message_fetched, io_proto._can_write, io_proto._data_received]
    assert all(isinstance(e._waiters, slim.Slots) for e in events)
    assert environ['wsgi.input'] is slim.EMPTY_INPUT and await environ['wsgi.input'].read() == b''
    waiter = asyncio.get_running_loop().create_task(events[0].wait())
    await asyncio.sleep(0)
    events[0].set()
    assert await asyncio.wait_for(waiter, 1) is True
    assert not events[0]._waiters


def test_trim_leaves_an_event_with_a_waiter_and_a_request_body_alone() -> None:
    event = asyncio.Event()
    waiters: Any = event._waiters
    waiters.append(object())
    assembler = SimpleNamespace(completed_queue=1, message_complete=event, message_fetched=asyncio.Event())
    io_proto = SimpleNamespace(_can_write=asyncio.Event(), _data_received=asyncio.Event())
    body = SimpleNamespace(payload=b'x')
    trimmer = slim.Trimmer({'eio-1': {'wsgi.input': body}})
    trimmer.trim(SimpleNamespace(sid='eio-1'), SimpleNamespace(assembler=assembler, io_proto=io_proto))
    assert isinstance(event._waiters, collections.deque)
    assert trimmer.environ['eio-1']['wsgi.input'] is body


def test_a_connection_without_what_it_expects_switches_it_off(caplog: pytest.LogCaptureFixture) -> None:
    trimmer = slim.Trimmer({})
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.slim'):
        trimmer.trim(SimpleNamespace(sid='x'), SimpleNamespace())  # no assembler: a library renamed it
        trimmer.trim(SimpleNamespace(sid='x'), SimpleNamespace())
    assert not trimmer.enabled
    assert caplog.text.count('per-connection trimming off') == 1


def test_install_uses_the_queue_hook_and_the_fast_path_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    sio = socketio.AsyncServer(async_mode='sanic', client_manager=fastpath.create_manager())
    fastpath.install(sio)
    trimmer = slim.install(sio, sio.manager)
    assert trimmer is not None and trimmer.trim in sio.manager.on_websocket
    assert isinstance(sio.eio.create_queue(), slim.SmallQueue)
    other = socketio.AsyncServer(async_mode='sanic')  # each server its own: the library's class is unchanged
    assert not isinstance(other.eio.create_queue(), slim.SmallQueue)


def test_install_does_nothing_when_check_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(slim, 'check', lambda: ['asyncio.Queue._getters'])
    sio = socketio.AsyncServer(async_mode='sanic', client_manager=fastpath.create_manager())
    fastpath.install(sio)
    with caplog.at_level(logging.WARNING, 'gamelist_service.transport.slim'):
        assert slim.install(sio, sio.manager) is None
    assert 'per-connection trimming off: this environment lacks asyncio.Queue._getters' in caplog.text
    assert sio.manager.on_websocket == [] and not isinstance(sio.eio.create_queue(), slim.SmallQueue)

"""Everything that touches library internals (Sanic, python-engineio, python-socketio, websockets, asyncio)."""

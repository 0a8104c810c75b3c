"""Running the real engine (uvicorn + FastAPI) inside a test, on a free port.

The engine's socket is bound before the server is built and handed to it, so that no other
process (another pytest-xdist worker, say) can take the port between choosing and serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import uvicorn

from dispatch.app import create_app, uvicorn_config
from dispatch.core.settings import EngineSettings
from loadtest.processes import free_port

__all__ = ["bound_socket", "free_port", "running_app", "running_engine", "serving", "serving_app"]


@contextlib.asynccontextmanager
async def running_engine(pg, streams, **engine_overrides) -> AsyncIterator[str]:
    async with running_app(pg, streams, **engine_overrides) as (addr, _state):
        yield addr


@contextlib.asynccontextmanager
async def running_app(pg, streams, **engine_overrides) -> AsyncIterator[tuple[str, object]]:
    """The engine on a free port; yields its address and its app.state.

    The dispatcher (delivery-events consumer and outbox relay) is off unless asked for with
    ``dispatcher=True``: leaving a consumer group costs the broker a second at every stop.
    """
    engine_overrides.setdefault("dispatcher", False)
    with bound_socket() as sock:
        engine = replace(EngineSettings(), port=sock.getsockname()[1], **engine_overrides)
        app = create_app(engine, streams, pg)
        server = uvicorn.Server(uvicorn_config(app, engine))
        server.config.loop = "asyncio"
        async with serving(server, sockets=[sock]):
            yield f"127.0.0.1:{engine.port}", app.state


@contextlib.asynccontextmanager
async def serving_app(app: Any) -> AsyncIterator[str]:
    """A bare ASGI app (no lifespan: a fake API or hub beside a page under test) on a free
    port, with the engine's websocket implementation; yields its address."""
    with bound_socket() as sock:
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws="websockets-sansio",
                                               loop="asyncio", lifespan="off", log_level="warning"))
        async with serving(server, sockets=[sock]):
            yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def bound_socket() -> Iterator[socket.socket]:
    """A TCP socket bound to a free port on 127.0.0.1, closed afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def serving(server: uvicorn.Server,
                  sockets: list[socket.socket] | None = None) -> AsyncIterator[None]:
    """Run a uvicorn server in this event loop until the block ends (on ``sockets`` when
    given, else on its configured host and port)."""
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the server did not start within 10 s")
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)

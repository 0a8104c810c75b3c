"""Running the real engine (uvicorn + FastAPI) inside a test, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import uvicorn

from dispatch.app import create_app, uvicorn_config
from dispatch.core.settings import EngineSettings
from loadtest.processes import free_port


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
    engine = replace(EngineSettings(), port=free_port(), **engine_overrides)
    app = create_app(engine, streams, pg)
    server = uvicorn.Server(uvicorn_config(app, engine))
    server.config.loop = "asyncio"
    async with serving(server):
        yield f"127.0.0.1:{engine.port}", app.state


@contextlib.asynccontextmanager
async def serving(server: uvicorn.Server) -> AsyncIterator[None]:
    """Run a uvicorn server in this event loop until the block ends."""
    task = asyncio.create_task(server.serve())
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

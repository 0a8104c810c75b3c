"""The aiohttp shell around ``dispatch.messaging.graph``: one POST, its answer classified.

aiohttp rather than httpx: it is already installed with the engine (faust depends on it),
its connection pool keeps the TLS connection to graph.facebook.com open between messages,
and httpx is only a test dependency here. The client never follows redirects (a redirect is
not an answer the Cloud API gives) and reads at most ``MAX_ANSWER_BYTES`` of an answer, so a
hostile or broken endpoint cannot make the sender buffer an endless body.
"""

from __future__ import annotations

import asyncio

import aiohttp

from dispatch.messaging.graph import GraphRequest, Outcome, classify

__all__ = ["MAX_ANSWER_BYTES", "GraphClient"]

MAX_ANSWER_BYTES = 64 * 1024


class GraphClient:
    """Posts requests built by ``graph.build_template_request``; ``timeout_s`` bounds each."""

    def __init__(self, timeout_s: float, *, connections: int = 16) -> None:
        self.timeout_s = timeout_s
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> GraphClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, request: GraphRequest) -> Outcome:
        """Post once; never raises for what the network or the server did (see ``classify``)."""
        await self.start()
        assert self._session is not None
        try:
            async with self._session.post(request.url, data=request.body, headers=dict(request.headers),
                                          allow_redirects=False) as answer:
                body = await answer.content.read(MAX_ANSWER_BYTES)
                return classify(answer.status, body, answer.headers)
        except TimeoutError:
            return classify(None, timed_out=True)
        except (aiohttp.ClientError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
            return classify(None, transport_error=f"{exc.__class__.__name__}: {exc}")

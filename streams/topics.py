"""Creating the pipeline's topics with the partition counts we chose, idempotently.

Creates rather than asks first: the bundled tansu leaves some topics out of its topic list
(it even accepts produce and fetch requests for a topic it lost in a restart, and only the
offset commits fail), and a metadata request for a missing topic would auto-create it with the
broker's default partition count. "Already exists" is the common answer and is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

ADMIN_TIMEOUT_S = 10.0


async def ensure_topics(bootstrap: str, topics: Mapping[str, int]) -> list[str]:
    """Create those of ``topics`` (name -> partitions) the broker does not have; their names.

    Raises the admin client's errors (broker away) and TimeoutError after 2 x ADMIN_TIMEOUT_S.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(ADMIN_TIMEOUT_S * 1000))
    created = []
    try:
        async with asyncio.timeout(ADMIN_TIMEOUT_S * 2):
            await admin.start()
            for name, partitions in topics.items():
                try:
                    response = await admin.create_topics([NewTopic(name, partitions, 1)])
                except TopicAlreadyExistsError:
                    continue
                codes = [e[1] for e in getattr(response, "topic_errors", ()) if e[0] == name]
                if not codes or codes[0] == 0:
                    created.append(name)
            return created
    finally:
        with contextlib.suppress(Exception):
            await admin.close()

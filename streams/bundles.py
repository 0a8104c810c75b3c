"""Bundles: many drivers' uploads in one `driver-locations` message (pure framing, no I/O).

A Kafka message per upload made the per-message costs the largest item on the path: aiokafka's
``send`` in every gateway process and faust's per-event machinery (~50 µs an event, which
capped a worker near 16k events/s) in the worker. The gateway therefore packs the uploads it
accepted in one event-loop iteration for the same partition into one message::

    {"v": 1, "uploads": [<upload>, <upload>, ...]}

where each ``<upload>`` is exactly what a one-upload message holds (``streams.records``: a
JSON array of one driver's pings). The bundle goes to the partition the driver's key would
have chosen (``partition_of``, Kafka's default murmur2 partitioner), so one driver's uploads
stay in order on one partition whether they travel alone or bundled, and old one-upload
messages and bundles can share a topic during a rolling upgrade.

Each upload in a bundle is decoded and judged on its own (``streams.decode.decode_message``):
one bad upload is dead-lettered alone, the others land. Bundles are capped in bytes and in
uploads (``split``), well below the broker's default 1 MB message limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import murmur2

__all__ = ["BUNDLE_VERSION", "MAX_BUNDLE_BYTES", "MAX_UPLOADS_PER_BUNDLE", "frame", "partition_of", "split"]

BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 256 * 1024       # what the gateway builds; the decoder accepts up to 4x this
MAX_UPLOADS_PER_BUNDLE = 2_000
_HEAD = b'{"v":%d,"uploads":[' % BUNDLE_VERSION
_TAIL = b"]}"


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (and aiokafka's) gives a keyed message."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def frame(uploads: Sequence[bytes]) -> bytes:
    """One bundle message holding these encoded uploads, in order."""
    return _HEAD + b",".join(uploads) + _TAIL


def split(sizes: Sequence[int], max_bytes: int = MAX_BUNDLE_BYTES,
          max_uploads: int = MAX_UPLOADS_PER_BUNDLE) -> list[tuple[int, int]]:
    """``[start, end)`` index ranges of uploads (by their encoded ``sizes``) that make bundles
    within ``max_bytes`` and ``max_uploads``, in order. An upload bigger than ``max_bytes`` on
    its own gets a bundle of its own (the gateway's message limit bounds it)."""
    ranges: list[tuple[int, int]] = []
    start, used = 0, len(_HEAD) + len(_TAIL)
    for i, size in enumerate(sizes):
        if i > start and (used + size + 1 > max_bytes or i - start >= max_uploads):
            ranges.append((start, i))
            start, used = i, len(_HEAD) + len(_TAIL)
        used += size + 1
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges

"""The producer's bundle flush with a stand-in for aiokafka: no caller is ever left waiting."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from streams.producer import BrokerUnavailable, PingProducer
from streams.settings import StreamSettings

TOPIC = "driver-locations-unit"


class FakeKafka:
    """``send`` returns a future the broker 'acknowledges' on the next loop iteration."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.fail_after = fail_after

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send(self, topic: str, *, value: bytes, partition: int) -> asyncio.Future:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise RuntimeError("the broker refused it")
        self.sent.append((partition, value))
        done = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(done.set_result, None)
        return done


def _producer(kafka: FakeKafka) -> PingProducer:
    producer = PingProducer(replace(StreamSettings(), locations_topic=TOPIC))
    producer._producer = kafka   # type: ignore[assignment]
    return producer


async def test_flushes_at_the_same_clock_reading_never_strand_an_upload(monkeypatch):
    # uvloop reads the clock once per loop iteration: two flushes can see the same time. A
    # clock that ticks every 50 ms makes that the common case.
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "time", lambda: round(time.monotonic() * 20) / 20)
    kafka = FakeKafka()
    producer = _producer(kafka)
    for round_ in range(30):
        await asyncio.wait_for(asyncio.gather(*(producer.send_upload(TOPIC, f"{round_}-{i}".encode(), b"[]")
                                                for i in range(20))), 5)
    assert producer.uploads_sent == 600 and len(kafka.sent) == producer.bundles_sent <= 30 * 4


async def test_a_failing_send_fails_its_callers_and_the_next_uploads_still_go():
    kafka = FakeKafka(fail_after=0)
    producer = _producer(kafka)
    results = await asyncio.wait_for(asyncio.gather(
        *(producer.send_upload(TOPIC, str(i).encode(), b"[]") for i in range(10)), return_exceptions=True), 5)
    assert all(isinstance(r, BrokerUnavailable) for r in results)
    kafka.fail_after = None
    producer._suspect.clear()   # (the real producer checks the topic again first)
    await asyncio.wait_for(producer.send_upload(TOPIC, b"x", b"[]"), 5)
    assert producer.uploads_sent == 1


async def test_busy_producers_wait_for_the_bundle_interval_quiet_ones_do_not():
    kafka = FakeKafka()
    producer = _producer(kafka)
    producer.bundle_wait_s = 0.05
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(producer.send_upload(TOPIC, b"quiet", b"[]"), 5)
    assert loop.time() - started < 0.04          # quiet: no wait
    producer._upload_rate = 10_000.0             # as after a burst
    started = loop.time()
    await asyncio.wait_for(producer.send_upload(TOPIC, b"busy", b"[]"), 5)
    assert loop.time() - started >= 0.04         # busy: one flush per interval


@pytest.mark.parametrize("cancel_after_s", [0.0, 0.01])
async def test_stopping_fails_the_waiting_uploads(cancel_after_s):
    class Slow(FakeKafka):
        async def send(self, topic, *, value, partition):
            await asyncio.sleep(10)

    producer = _producer(Slow())
    waiting = [asyncio.ensure_future(producer.send_upload(TOPIC, str(i).encode(), b"[]")) for i in range(5)]
    await asyncio.sleep(cancel_after_s)
    await producer.stop()
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(isinstance(r, BrokerUnavailable) for r in results)


async def test_a_trickle_of_uploads_never_counts_as_busy():
    # 200 uploads/s, some in pairs in the same instant: below BUSY_UPLOADS_PER_S, so none waits.
    producer = _producer(FakeKafka())
    producer.bundle_wait_s = 0.05
    loop = asyncio.get_running_loop()
    slowest = 0.0
    for _ in range(50):
        started = loop.time()
        await asyncio.wait_for(asyncio.gather(producer.send_upload(TOPIC, b"a", b"[]"),
                                              producer.send_upload(TOPIC, b"b", b"[]")), 5)
        slowest = max(slowest, loop.time() - started)
        await asyncio.sleep(0.01)
    assert slowest < 0.04 and producer._upload_rate < 250

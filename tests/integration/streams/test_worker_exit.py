"""A crashed worker process exits with a failure status, so its supervisor restarts it.

faust stops a crashed app's worker with status 0; ``run_worker`` turns that into 1. The crash
here is a batch failing with an error that is not retried (the counters key holds a string,
so the write script's HINCRBY fails with WRONGTYPE); the worker runs in its own process, with
its own Redis and broker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from streams.keys import INGEST_COUNTS_KEY
from tests.integration.private_services import private_redis, private_tansu
from tests.integration.streams.harness import (
    JOBURG,
    new_ids,
    ping,
    raw,
)

WORKER = """
import sys
from streams.app import run_worker
from streams.settings import StreamSettings
run_worker(StreamSettings.from_env(), None, loglevel="warn", use_uvloop=False)
"""


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_a_crashed_worker_exits_with_a_failure_status(stream_settings, tmp_path):
    async with private_tansu() as broker, private_redis() as redis_server:
        bootstrap = f"127.0.0.1:{broker.port}"
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        redis = Redis.from_url(redis_url)
        await redis.set(INGEST_COUNTS_KEY, "not a hash")
        env = {**os.environ, "WAKALA_KAFKA_BOOTSTRAP": bootstrap, "WAKALA_REDIS_URL": redis_url,
               "WAKALA_LOCATIONS_TOPIC": stream_settings.locations_topic,
               "WAKALA_DEAD_LETTERS_TOPIC": stream_settings.dead_letters_topic,
               "WAKALA_APP_ID": stream_settings.app_id, "WAKALA_STATE_DIR": str(tmp_path),
               "WAKALA_KAFKA_SESSION_TIMEOUT_S": "2"}
        proc = _spawn(env)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            driver, tenant = new_ids()
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                # keep sending until the worker has joined and takes a batch
                await producer.send_and_wait(stream_settings.locations_topic, key=driver.encode(),
                                             value=raw(ping(driver, tenant, *JOBURG, time.time())))
                await asyncio.sleep(0.5)
            assert proc.poll() is not None, "the worker did not crash"
            assert proc.returncode == 1, proc.stderr.read().decode(errors="replace")[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            await producer.stop()
            await redis.aclose()

"""Code as users write it, checked by `mypy --strict` against the package's
stubs (not run by pytest: it has no test)."""
import asyncio
import datetime
from typing import Any, Dict, List

import kcpy
from kcpy import StreamConsumer


def plain() -> None:
    consumer = StreamConsumer("my_stream_name", consumer_name="my_consumer", checkpoint=True)
    for record in consumer:
        data: bytes = record["Data"]
        print(data, record["SequenceNumber"])


def options() -> List[Dict[str, Any]]:
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    with StreamConsumer("s", checkpoint_store="postgres://localhost/db", group=True, start_position=start,
                        endpoint_url="http://127.0.0.1:4567", region_name="us-east-1") as consumer:
        name: str = consumer.consumer_name
        print(name)
        return [next(consumer)]


async def reading() -> None:
    async with StreamConsumer("s", start_position="LATEST") as consumer:
        async for record in consumer:
            print(record)
    await consumer.aclose()


def errors() -> None:
    try:
        plain()
    except kcpy.StreamNotFound as error:
        print(error)
    except (kcpy.CheckpointError, kcpy.AccessDenied, kcpy.Error):
        pass


asyncio.run(reading()) if __name__ == "__main__" else None

"""`async for`, `async with`, and a cancelled wait that drops no record."""
import asyncio
from typing import Any, Callable, List

import kcpy
from conftest import OPTIONS, put


def test_async_for_reads_the_records_without_blocking_the_event_loop(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(2)
    put(kinesis, stream, [f"r{i}" for i in range(20)])

    async def main() -> List[bytes]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        got: List[bytes] = []
        async with kcpy.StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS) as consumer:
            async for record in consumer:
                got.append(record["Data"])
                if len(got) == 20:
                    break
        ticker.cancel()
        # The loop kept running other tasks while the consumer started and waited.
        assert ticks > 0
        return got

    assert sorted(asyncio.run(main())) == sorted(f"r{i}".encode() for i in range(20))


def test_a_cancelled_wait_for_the_next_record_drops_no_record(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(1)

    async def main() -> List[bytes]:
        consumer = kcpy.StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS)
        iterator = consumer.__aiter__()
        # Nothing to read yet: the wait is cancelled by the timeout.
        try:
            await asyncio.wait_for(iterator.__anext__(), timeout=0.5)
            raise AssertionError("a record came from an empty stream")
        except asyncio.TimeoutError:
            pass
        put(kinesis, stream, ["first", "second"])
        got = [(await iterator.__anext__())["Data"], (await iterator.__anext__())["Data"]]
        await consumer.aclose()
        return got

    assert asyncio.run(main()) == [b"first", b"second"]

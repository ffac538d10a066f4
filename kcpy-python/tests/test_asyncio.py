"""`async for`, `async with`, a cancelled wait that drops no record, and one
reader at a time."""
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


def test_waits_cancelled_over_and_over_with_records_waiting_drop_none_and_repeat_none(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(1)
    values = [f"r{i}" for i in range(150)]
    put(kinesis, stream, values)

    async def main() -> List[bytes]:
        got: List[bytes] = []
        async with kcpy.StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS) as consumer:
            iterator = consumer.__aiter__()
            rounds = 0
            while len(got) < len(values):
                # Cancelled at every point a wait can be at: before it runs,
                # while the consumer starts, while it waits, once it is done.
                task = asyncio.ensure_future(iterator.__anext__())
                for _ in range(rounds % 4):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    got.append((await task)["Data"])
                except asyncio.CancelledError:
                    pass
                rounds += 1
                if rounds % 10 == 0:
                    # Now and then a wait that is left to finish, so the
                    # loop ends however the cancels fall.
                    got.append((await iterator.__anext__())["Data"])
        return got

    # One shard: its records in order, each once.
    assert asyncio.run(main()) == [value.encode() for value in values]


def test_aclose_from_another_task_ends_a_wait_in_progress(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(1)
    put(kinesis, stream, ["only"])

    async def main() -> List[Any]:
        consumer = kcpy.StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS)
        waiting = asyncio.Event()
        got: List[Any] = []

        async def read() -> None:
            async for record in consumer:
                got.append(record["Data"])
                waiting.set()
            got.append("ended")

        reader = asyncio.ensure_future(read())
        await waiting.wait()
        # The reader now waits for a record that will not come; closing must
        # not wait for one.
        await asyncio.wait_for(consumer.aclose(), timeout=60)
        await asyncio.wait_for(reader, timeout=60)
        return got

    assert asyncio.run(main()) == [b"only", "ended"]


def test_a_second_task_reading_while_one_waits_is_refused_and_takes_nothing(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(1)
    put(kinesis, stream, ["a", "b"])

    async def main() -> List[bytes]:
        async with kcpy.StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS) as consumer:
            first = asyncio.ensure_future(consumer.__anext__())
            # One turn of the loop: the first read starts and waits for the
            # consumer to start.
            await asyncio.sleep(0)
            try:
                await consumer.__anext__()
                refused = False
            except RuntimeError as error:
                refused = "already being read" in str(error)
            assert refused
            got = [(await first)["Data"]]
            # Once the first read is done, reading goes on.
            got.append((await consumer.__anext__())["Data"])
            return got

    assert asyncio.run(main()) == [b"a", b"b"]

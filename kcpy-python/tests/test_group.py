"""A consumer group with its leases in PostgreSQL, from Python."""
import os
from typing import Any, Callable

import kcpy
from conftest import OPTIONS, put

POSTGRES = os.environ.get("KCPY_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


def test_a_group_member_alone_reads_every_shard_and_keeps_its_checkpoints_in_the_lease_store(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(2)
    put(kinesis, stream, [f"g{i}" for i in range(10)])

    with kcpy.StreamConsumer(stream, "py-group", checkpoint_store=POSTGRES, group=True,
                             endpoint_url=endpoint, **OPTIONS) as consumer:
        got = sorted(next(consumer)["Data"] for _ in range(10))
        # Asking for the next counts the tenth as processed.
        put(kinesis, stream, ["g10"])
        got.append(next(consumer)["Data"])
    assert got == sorted(f"g{i}".encode() for i in range(10)) + [b"g10"]

    # A new member resumes after what was processed: g10 was handed out
    # last and not counted as processed, so it comes again.
    put(kinesis, stream, ["g11"])
    with kcpy.StreamConsumer(stream, "py-group", checkpoint_store=POSTGRES, group=True,
                             endpoint_url=endpoint, **OPTIONS) as consumer:
        assert sorted([next(consumer)["Data"], next(consumer)["Data"]]) == [b"g10", b"g11"]

"""The Python kcpy README's snippets, run as written: the stream, endpoint,
credentials and region come from the environment, as a boto3 user's do."""
import datetime
import sqlite3
from typing import Any, Callable, Dict, List

import pytest

from conftest import Script, put, wait_active

PLAIN = """\
from kcpy import StreamConsumer
consumer = StreamConsumer('my_stream_name')
for record in consumer:
    print(record)
"""

WITH_CHECKPOINT = """\
from kcpy import StreamConsumer
consumer = StreamConsumer('my_stream_name', consumer_name='my_consumer', checkpoint=True)
for record in consumer:
    print(record)
"""


@pytest.fixture
def my_stream_name(kinesis: Any) -> str:
    """The README's stream, made fresh with one shard, so that its records
    come in one order."""
    name = "my_stream_name"
    if name in kinesis.list_streams()["StreamNames"]:
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        kinesis.get_waiter("stream_not_exists").wait(StreamName=name, WaiterConfig=dict(Delay=0.2, MaxAttempts=150))
    kinesis.create_stream(StreamName=name, ShardCount=1)
    wait_active(kinesis, name)
    return name


def printed(lines: List[str]) -> List[Dict[str, Any]]:
    """The records as the snippet printed them (their repr)."""
    return [eval(line, {"datetime": datetime}) for line in lines]


def test_the_plain_snippet_prints_every_record_as_the_old_package_shaped_it(
    kinesis: Any, my_stream_name: str, run_script: Callable[..., Script]
) -> None:
    answers = put(kinesis, my_stream_name, ["Jessica Walter", "Jason Bateman", "Portia de Rossi"])
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)

    script = run_script(PLAIN)
    records = printed(script.read(3))

    assert [r["Data"] for r in records] == [b"Jessica Walter", b"Jason Bateman", b"Portia de Rossi"]
    assert [r["PartitionKey"] for r in records] == ["Jessica Walter", "Jason Bateman", "Portia de Rossi"]
    assert [r["SequenceNumber"] for r in records] == [a["SequenceNumber"] for a in answers]
    assert [r["ShardId"] for r in records] == [a["ShardId"] for a in answers]
    for record in records:
        assert set(record) == {"ApproximateArrivalTimestamp", "Data", "PartitionKey", "SequenceNumber", "ShardId"}
        arrival = record["ApproximateArrivalTimestamp"]
        assert isinstance(arrival, datetime.datetime) and arrival.tzinfo is not None
        assert before <= arrival <= datetime.datetime.now(datetime.timezone.utc)
        assert isinstance(record["SequenceNumber"], str) and record["SequenceNumber"].isdigit()

    # Ctrl-C stops it with KeyboardInterrupt, as any Python loop.
    assert script.interrupt() != 0
    assert "KeyboardInterrupt" in "".join(script.stderr)


def test_the_checkpoint_snippet_resumes_after_the_last_record_processed_when_run_again(
    kinesis: Any, my_stream_name: str, run_script: Callable[..., Script], tmp_path: Any
) -> None:
    first = put(kinesis, my_stream_name, ["a", "b", "c"])

    script = run_script(WITH_CHECKPOINT)
    assert [r["Data"] for r in printed(script.read(3))] == [b"a", b"b", b"c"]
    script.interrupt()

    # The old package's file and table, its columns, a sequence number as
    # text: the last record's, or (if Ctrl-C came before the loop asked for
    # the next record, which marks it processed) the one before.
    with sqlite3.connect(tmp_path / "kcpy_checkpoint.db") as db:
        rows = db.execute("SELECT consumer_name, stream_name, shard_id, seq_no, typeof(seq_no) FROM kcpy").fetchall()
    assert rows in ([("my_consumer", "my_stream_name", first[0]["ShardId"], first[i]["SequenceNumber"], "text")]
                    for i in (2, 1))
    redelivered = [b"c"] if rows[0][3] == first[1]["SequenceNumber"] else []

    put(kinesis, my_stream_name, ["d", "e"])
    again = run_script(WITH_CHECKPOINT)
    assert [r["Data"] for r in printed(again.read(2 + len(redelivered)))] == redelivered + [b"d", b"e"]
    # Nothing else was delivered again: the next line is this one.
    put(kinesis, my_stream_name, ["marker"])
    assert printed(again.read(1))[0]["Data"] == b"marker"
    again.interrupt()

"""At-least-once delivery through the wheel: a restart resumes where the
processed records end, a kill loses nothing, resharding is followed."""
import json
import sqlite3
from typing import Any, Callable, Dict, List

import pytest

from conftest import Script, put

# Prints each record as JSON; the stream and options come as arguments.
READER = """\
import json, sys
from kcpy import StreamConsumer
consumer = StreamConsumer(sys.argv[1] if len(sys.argv) > 1 else {stream!r}, consumer_name='reader', checkpoint={checkpoint})
for record in consumer:
    print(json.dumps(dict(data=record['Data'].decode(), key=record['PartitionKey'],
                          seq=record['SequenceNumber'], shard=record['ShardId'])))
"""


def records(lines: List[str]) -> List[Dict[str, str]]:
    return [json.loads(line) for line in lines]


def test_a_consumer_killed_mid_stream_loses_nothing_when_it_starts_again(
    kinesis: Any, make_stream: Callable[[int], str], run_script: Callable[..., Script], tmp_path: Any
) -> None:
    stream = make_stream(2)
    values = [f"v{i}" for i in range(400)]
    entries = [dict(Data=v.encode(), PartitionKey=v) for v in values]
    for start in range(0, len(entries), 200):
        kinesis.put_records(StreamName=stream, Records=entries[start:start + 200])

    killed = run_script(READER.format(stream=stream, checkpoint=True))
    seen = records(killed.read(150))
    killed.kill()

    with sqlite3.connect(tmp_path / "kcpy_checkpoint.db") as db:
        kinds = {kind for (kind,) in db.execute("SELECT typeof(seq_no) FROM kcpy")}
    assert kinds <= {"text"}

    restarted = run_script(READER.format(stream=stream, checkpoint=True))
    # Everything not yet seen comes, perhaps after some seen before the kill.
    remaining = set(values) - {r["data"] for r in seen}
    while remaining:
        remaining -= {r["data"] for r in records(restarted.read(1))}
    restarted.interrupt()


@pytest.mark.parametrize("checkpoint", [True, False])
def test_records_of_a_parent_shard_come_before_those_of_its_children_for_each_key(
    kinesis: Any, make_stream: Callable[[int], str], run_script: Callable[..., Script], checkpoint: bool
) -> None:
    stream = make_stream(1)
    keys = [f"key-{i}" for i in range(8)]
    before = put(kinesis, stream, [f"{k}/before" for k in keys], keys)
    kinesis.update_shard_count(StreamName=stream, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig=dict(Delay=0.2, MaxAttempts=150))
    after = put(kinesis, stream, [f"{k}/after" for k in keys], keys)
    assert {a["ShardId"] for a in after}.isdisjoint({b["ShardId"] for b in before})

    script = run_script(READER.format(stream=stream, checkpoint=checkpoint))
    got = records(script.read(16))
    script.interrupt()

    assert sorted(r["data"] for r in got) == sorted([f"{k}/before" for k in keys] + [f"{k}/after" for k in keys])
    for key in keys:
        assert [r["data"] for r in got if r["key"] == key] == [f"{key}/before", f"{key}/after"]

"""Ctrl-C stops the consumer gracefully: the checkpoints of what was
processed are written, then KeyboardInterrupt goes on, to be caught or not."""
import sqlite3
from typing import Any, Callable

from conftest import Script, put

CATCHING = """\
from kcpy import StreamConsumer
consumer = StreamConsumer({stream!r}, 'app', checkpoint=True)
try:
    for record in consumer:
        print(record['Data'].decode())
except KeyboardInterrupt:
    print('interrupted')
"""


def test_ctrl_c_writes_the_checkpoints_of_processed_records_then_raises_keyboard_interrupt(
    kinesis: Any, make_stream: Callable[[int], str], run_script: Callable[..., Script], tmp_path: Any
) -> None:
    stream = make_stream(2)
    answers = put(kinesis, stream, [f"r{i}" for i in range(6)])

    script = run_script(CATCHING.format(stream=stream))
    lines = script.read(6)
    assert sorted(lines) == [f"r{i}" for i in range(6)]
    assert script.interrupt() == 0
    assert script.rest() == ["interrupted"]

    # Each shard's checkpoint is at its last record. Only the record printed
    # last may not count as processed: Ctrl-C may come before the loop asks
    # for the next one, which is what marks it processed.
    by_value = {f"r{i}": answer for i, answer in enumerate(answers)}
    shards = {answer["ShardId"] for answer in answers}
    with sqlite3.connect(tmp_path / "kcpy_checkpoint.db") as db:
        rows = dict(db.execute("SELECT shard_id, seq_no FROM kcpy WHERE consumer_name = 'app'").fetchall())
    for shard in shards:
        printed = [by_value[line]["SequenceNumber"] for line in lines if by_value[line]["ShardId"] == shard]
        if by_value[lines[-1]]["ShardId"] == shard:
            assert rows.get(shard) in (printed[-1], printed[-2] if len(printed) > 1 else None)
        else:
            assert rows[shard] == printed[-1]

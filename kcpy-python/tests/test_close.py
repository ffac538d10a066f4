"""`close()` from another thread while a read waits, and a consumer that is
dropped unclosed."""
import sqlite3
import threading
from typing import Any, Callable, List

import kcpy
from conftest import OPTIONS, put


def test_close_from_another_thread_ends_a_read_waiting_there(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(1)
    put(kinesis, stream, ["only"])
    consumer = kcpy.StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS)
    first = threading.Event()
    got: List[Any] = []

    def read() -> None:
        try:
            for record in consumer:
                got.append(record["Data"])
                first.set()
            got.append("ended")
        except Exception as error:  # noqa: BLE001 - the test reports it
            got.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(60)
    # The reader waits, without the GIL, for a record that will not come.
    consumer.close()
    reader.join(60)
    assert not reader.is_alive()
    assert got == [b"only", "ended"]


def test_a_consumer_dropped_unclosed_writes_its_checkpoints(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str, tmp_path: Any
) -> None:
    stream = make_stream(1)
    answers = put(kinesis, stream, ["a", "b", "c"])
    path = str(tmp_path / "kcpy_checkpoint.db")
    consumer = kcpy.StreamConsumer(
        stream, "app", checkpoint=True, checkpoint_db_file_path=path, endpoint_url=endpoint, **OPTIONS
    )
    iterator = iter(consumer)
    assert [next(iterator)["Data"] for _ in range(3)] == [b"a", b"b", b"c"]
    del iterator, consumer

    # "c" was handed out last and the next record never asked for: "b" is
    # the last record processed.
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT seq_no FROM kcpy WHERE consumer_name = 'app'").fetchall()
    assert rows == [(answers[1]["SequenceNumber"],)]

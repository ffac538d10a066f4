"""A checkpoint file written by the Python kcpy package (0.1.7) itself: its
positions carry over; a float it stored is reported, never used."""
import sqlite3
from typing import Any, Callable

import pytest

import kcpy
from conftest import OPTIONS, put


class OldCheckpoint:
    """The statements the Python kcpy package 0.1.7 ran (kcpy/checkpoint.py),
    as it ran them."""

    def __init__(self, path: str, table: str, consumer: str, stream: str, shard: str) -> None:
        self.path, self.table, self.where = path, table, (
            f"WHERE consumer_name = '{consumer}' AND stream_name = '{stream}' AND shard_id = '{shard}'")
        self.key = (consumer, stream, shard)
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {table}"
                       "(consumer_name text, stream_name text, shard_id text, seq_no text)")

    def set(self, seq_no: str) -> None:
        with sqlite3.connect(self.path) as db:
            if db.execute(f"SELECT seq_no FROM {self.table} {self.where}").fetchone() is None:
                consumer, stream, shard = self.key
                db.execute(f"INSERT INTO {self.table} (consumer_name, stream_name, shard_id, seq_no) "
                           f"VALUES ('{consumer}', '{stream}', '{shard}', '{seq_no}')")
            else:
                db.execute(f"UPDATE {self.table} SET seq_no = {seq_no} {self.where}")


def test_a_position_the_old_package_saved_carries_over(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str, tmp_path: Any
) -> None:
    stream = make_stream(1)
    answers = put(kinesis, stream, ["a", "b", "c", "d"])
    path = str(tmp_path / "old.db")
    # Its first write of a shard's position was text.
    OldCheckpoint(path, "kcpy", "app", stream, answers[0]["ShardId"]).set(answers[1]["SequenceNumber"])

    consumer = kcpy.StreamConsumer(stream, "app", True, path, "kcpy", endpoint_url=endpoint, **OPTIONS)
    assert [next(consumer)["Data"], next(consumer)["Data"]] == [b"c", b"d"]
    consumer.close()

    # The old package can still read what we wrote: the last record processed
    # (d was handed out last, and the next was not asked for), as text.
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq_no, typeof(seq_no) FROM kcpy").fetchall() == [
            (answers[2]["SequenceNumber"], "text")]


def test_a_position_the_old_package_stored_as_a_float_is_reported_and_left_as_it_is(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str, tmp_path: Any
) -> None:
    stream = make_stream(1)
    answers = put(kinesis, stream, ["a", "b", "c"])
    path = str(tmp_path / "old.db")
    old = OldCheckpoint(path, "kcpy", "app", stream, answers[0]["ShardId"])
    old.set(answers[0]["SequenceNumber"])
    # Its later writes went through SQLite as a number literal: a float.
    old.set(answers[1]["SequenceNumber"])
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT seq_no FROM kcpy").fetchone()
    assert stored != answers[1]["SequenceNumber"]

    consumer = kcpy.StreamConsumer(stream, "app", True, path, "kcpy", endpoint_url=endpoint, **OPTIONS)
    with pytest.raises(kcpy.CheckpointError, match="(?i)malformed|float|not a sequence number"):
        next(consumer)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq_no FROM kcpy").fetchone() == (stored,)


def test_a_float_in_a_column_of_real_affinity_is_reported_as_it_is_stored(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str, tmp_path: Any
) -> None:
    stream = make_stream(1)
    answers = put(kinesis, stream, ["a"])
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as db:
        # A table made by hand, its seq_no column untyped: SQLite keeps the
        # number literal as a REAL.
        db.execute("CREATE TABLE kcpy(consumer_name text, stream_name text, shard_id text, seq_no)")
        db.execute(f"INSERT INTO kcpy VALUES ('app', '{stream}', '{answers[0]['ShardId']}', "
                   f"{answers[0]['SequenceNumber']})")
        assert db.execute("SELECT typeof(seq_no) FROM kcpy").fetchone() == ("real",)

    consumer = kcpy.StreamConsumer(stream, "app", True, path, "kcpy", endpoint_url=endpoint, **OPTIONS)
    with pytest.raises(kcpy.CheckpointError, match=r"malformed: \"4\.9"):
        next(consumer)

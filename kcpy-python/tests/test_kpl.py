"""Records a KPL aggregator put (aws-kinesis-agg) come out one by one, with
their sub-sequence numbers."""
from typing import Any, Callable

import aws_kinesis_agg.aggregator

import kcpy
from conftest import OPTIONS


def test_the_user_records_of_an_aggregate_come_out_one_by_one_with_their_sub_sequence_numbers(
    kinesis: Any, make_stream: Callable[[int], str], endpoint: str
) -> None:
    stream = make_stream(1)
    aggregator = aws_kinesis_agg.aggregator.RecordAggregator()
    for i in range(5):
        aggregator.add_user_record(f"user-{i}", f"payload-{i}".encode())
    key, _, data = aggregator.clear_and_get().get_contents()
    answer = kinesis.put_record(StreamName=stream, PartitionKey=key, Data=data)
    kinesis.put_record(StreamName=stream, PartitionKey="plain", Data=b"plain")

    with kcpy.StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS) as consumer:
        records = [next(consumer) for _ in range(6)]
    assert [(r["Data"], r["PartitionKey"], r.get("SubSequenceNumber")) for r in records] == [
        *((f"payload-{i}".encode(), f"user-{i}", i) for i in range(5)), (b"plain", "plain", None)]
    assert {r["SequenceNumber"] for r in records[:5]} == {answer["SequenceNumber"]}

"""The peers kcpy is measured against, each reading RECORDS records from
TRIM_HORIZON of STREAM and printing one JSON object: CPU per record (user +
system, the whole process) and peak RSS.

    python3 peers.py boto3-loop ENDPOINT STREAM RECORDS
    python3 peers.py python-kcpy ENDPOINT STREAM RECORDS        # ShardConsumer x threads
    python3 peers.py python-kcpy-stream ENDPOINT STREAM SECONDS # StreamConsumer, time-boxed
    python3 peers.py prepare ENDPOINT STREAM SHARDS             # a stream, one record per shard
"""
import json
import resource
import sys
import threading
import time

import boto3

OPTIONS = dict(region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024.0


def shard_ids(client, stream):
    return [s["ShardId"] for s in client.list_shards(StreamName=stream)["Shards"]]


def report(records, started, extra=None):
    cpu, rss = usage()
    result = dict(records=records, wall_s=time.time() - started, cpu_s=cpu,
                  cpu_us_per_record=cpu * 1e6 / max(records, 1), peak_rss_mb=rss)
    result.update(extra or {})
    print(json.dumps(result))


def boto3_loop(endpoint, stream, records):
    started = time.time()
    client = boto3.client("kinesis", endpoint_url=endpoint, **OPTIONS)
    iterators = {
        shard: client.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for shard in shard_ids(client, stream)
    }
    read = 0
    while read < records:
        for shard, iterator in list(iterators.items()):
            resp = client.get_records(ShardIterator=iterator, Limit=10000)
            for record in resp["Records"]:
                read += 1
                _ = record["Data"]
            iterators[shard] = resp["NextShardIterator"]
    report(read, started)


def python_kcpy(endpoint, stream, records):
    from kcpy import ShardConsumer

    started = time.time()
    client = boto3.client("kinesis", endpoint_url=endpoint, **OPTIONS)
    shards = shard_ids(client, stream)
    counts = [0] * len(shards)
    per_shard = records // len(shards)

    def read(i, shard):
        consumer = ShardConsumer(stream, shard, dict(endpoint_url=endpoint, **OPTIONS))
        for record in consumer:
            _ = record["Data"]
            counts[i] += 1
            if counts[i] >= per_shard:
                return

    threads = [threading.Thread(target=read, args=(i, s)) for i, s in enumerate(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report(sum(counts), started)


def python_kcpy_stream(endpoint, stream, seconds):
    from kcpy import StreamConsumer

    started = time.time()
    read = 0
    consumer = StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS)
    for record in consumer:
        _ = record["Data"]
        read += 1
        if time.time() - started >= seconds:
            break
    report(read, started, dict(time_boxed_s=seconds, records_per_s=read / (time.time() - started)))


def prepare(endpoint, stream, shards):
    client = boto3.client("kinesis", endpoint_url=endpoint, **OPTIONS)
    client.create_stream(StreamName=stream, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig=dict(Delay=1))
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        client.put_record(StreamName=stream, PartitionKey="template", Data=b"template",
                          ExplicitHashKey=shard["HashKeyRange"]["StartingHashKey"])


if __name__ == "__main__":
    mode, endpoint, stream, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dict(boto3_loop=boto3_loop, python_kcpy=python_kcpy, python_kcpy_stream=python_kcpy_stream,
         prepare=prepare)[mode.replace("-", "_")](endpoint, stream, n)

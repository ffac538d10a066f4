"""The peers kcpy is measured against, each reading RECORDS records from
TRIM_HORIZON of STREAM and printing one JSON object: CPU per record (user +
system, the whole process) and peak RSS.

    python3 peers.py boto3-loop ENDPOINT STREAM RECORDS
    python3 peers.py python-kcpy ENDPOINT STREAM RECORDS        # ShardConsumer x threads
    python3 peers.py python-kcpy-stream ENDPOINT STREAM SECONDS # StreamConsumer, time-boxed
    python3 peers.py python-kcpy-wheel ENDPOINT STREAM RECORDS  # StreamConsumer of kcpy-python's wheel
    python3 peers.py boto3-latency ENDPOINT STREAM SAMPLES      # put -> delivery, 5 polls/s per shard
    python3 peers.py prepare ENDPOINT STREAM SHARDS             # a stream, one record per shard
"""
import json
import random
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


def python_kcpy_wheel(endpoint, stream, records):
    """The same loop as python_kcpy_stream, through the wheel built from
    kcpy-python (in a venv of its own: it is also imported as kcpy). Its CPU
    per record is the loop's, from the consumer's construction to its close;
    the process's, with the interpreter's start and imports, is reported too."""
    from kcpy import StreamConsumer

    started = time.time()
    before, _ = usage()
    read = 0
    consumer = StreamConsumer(stream, endpoint_url=endpoint, **OPTIONS)
    for record in consumer:
        _ = record["Data"]
        read += 1
        if read >= records:
            break
    consumer.close()
    wall = time.time() - started
    process_cpu, rss = usage()
    print(json.dumps(dict(records=read, wall_s=wall, cpu_s=process_cpu - before,
                          cpu_us_per_record=(process_cpu - before) * 1e6 / max(read, 1),
                          process_cpu_us_per_record=process_cpu * 1e6 / max(read, 1),
                          peak_rss_mb=rss, records_per_s=read / wall)))


def boto3_latency(endpoint, stream, samples):
    """Puts about 30 records a second and reads with one thread per shard, each
    calling GetRecords every 200 ms (start to start): put-to-delivery latency
    in ms, as kcpy-bench latency measures it."""
    client = boto3.client("kinesis", endpoint_url=endpoint, **OPTIONS)
    client.create_stream(StreamName=stream, ShardCount=4)
    client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig=dict(Delay=1))
    latencies, lock, done = [], threading.Lock(), threading.Event()

    def poll(shard):
        reader = boto3.client("kinesis", endpoint_url=endpoint, **OPTIONS)
        iterator = reader.get_shard_iterator(StreamName=stream, ShardId=shard,
                                             ShardIteratorType="LATEST")["ShardIterator"]
        while not done.is_set():
            started = time.time()
            resp = reader.get_records(ShardIterator=iterator, Limit=10000)
            now = time.time()
            with lock:
                latencies.extend((now - int(r["Data"]) / 1e6) * 1e3 for r in resp["Records"])
                if len(latencies) >= samples:
                    done.set()
            iterator = resp["NextShardIterator"]
            time.sleep(max(0.0, 0.2 - (time.time() - started)))

    threads = [threading.Thread(target=poll, args=(s,)) for s in shard_ids(client, stream)]
    for t in threads:
        t.start()
    time.sleep(1)
    for i in range(samples):
        if done.is_set():
            break
        # About 30 puts a second, at random moments against the polls, as
        # kcpy-bench latency puts them.
        tick = time.time()
        client.put_record(StreamName=stream, PartitionKey=f"k{i}", Data=str(int(time.time() * 1e6)).encode())
        time.sleep(max(0.0, random.uniform(0.017, 0.05) - (time.time() - tick)))
    done.wait(30)
    done.set()
    for t in threads:
        t.join()
    values = sorted(latencies)
    pick = lambda q: values[round((len(values) - 1) * q)] if values else None
    print(json.dumps(dict(samples=len(values), p50=pick(0.5), p99=pick(0.99), max=pick(1.0))))


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
         python_kcpy_wheel=python_kcpy_wheel,
         boto3_latency=boto3_latency, prepare=prepare)[mode.replace("-", "_")](endpoint, stream, n)

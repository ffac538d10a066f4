"""Builds kinesis-mock's saved state for a stream with many records.

Putting 200,000 records through PutRecords takes the emulator minutes (it
slows down as shards fill), so this writes its state file directly: it reads
the state the emulator saved for a stream holding one record per shard and
repeats that record's shape, numbering the sequence numbers the way the
emulator does (a 16-hex-digit index inside the number).

    python3 make_data.py STATE_FILE RECORDS RECORD_BYTES
"""
import base64
import json
import sys


def main():
    path, total, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open(path) as f:
        state = json.load(f)
    (stream,) = state["streams"].values()
    shards = stream["shards"]
    per_shard = total // len(shards)
    for n, (shard, records) in enumerate(sorted(shards.items())):
        template = records[0]
        digits = format(int(template["SequenceNumber"]), "x")
        generated = []
        for i in range(per_shard):
            # Index i+1 at hex digits 11..27, as the emulator lays it out.
            seq = int(digits[:11] + format(i + 1, "016x") + digits[27:], 16)
            payload = (f"shard {n} record {i} ".encode() * size)[:size]
            generated.append(
                dict(
                    template,
                    SequenceNumber=str(seq),
                    PartitionKey=f"pk-{n}-{i % 1000}",
                    Data=base64.b64encode(payload).decode(),
                )
            )
        shards[shard] = generated
    with open(path, "w") as f:
        json.dump(state, f)
    print(f"{per_shard * len(shards)} records over {len(shards)} shards")


if __name__ == "__main__":
    main()

"""Turns the raw measurements of bench/run into bench/results/latest.json and
latest.md: medians of the runs with min and max, ratios against each peer,
the targets, and the machine it ran on.

    python3 report.py RAW_DIR OUT_DIR
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def load(raw, name):
    path = os.path.join(raw, name + ".jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(runs, key):
    values = [r[key] for r in runs if key in r]
    if not values:
        return None
    return dict(median=statistics.median(values), min=min(values), max=max(values), runs=len(values))


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return dict(cpu=cpu, cores=os.cpu_count(), memory_gb=round(mem_gb, 1), os=platform.platform(), rustc=rustc,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d"))


def unit(value, digits, name):
    return "n/a" if value is None else f"{value:,.{digits}f} {name}"


def main():
    raw, out = sys.argv[1], sys.argv[2]
    kcpy, boto, pk = load(raw, "kcpy"), load(raw, "boto3_loop"), load(raw, "python_kcpy")
    stream, latency, idle = load(raw, "python_kcpy_stream"), load(raw, "latency"), load(raw, "idle")
    wheel = load(raw, "python_kcpy_wheel")
    shards, ceiling, checkpoints = load(raw, "shards_1000"), load(raw, "ceiling"), load(raw, "checkpoints")
    wakeups, boto3_latency = load(raw, "wakeups"), load(raw, "boto3_latency")
    fanout, fanout_latency, idle_fanout = load(raw, "kcpy_fanout"), load(raw, "fanout_latency"), load(raw, "idle_fanout")
    ceiling_kpl = load(raw, "ceiling_kpl")
    kcpy_metrics, ceiling_metrics = load(raw, "kcpy_metrics"), load(raw, "ceiling_metrics")
    ceiling_allocations, ceiling_kpl_allocations = load(raw, "ceiling_allocations"), load(raw, "ceiling_kpl_allocations")
    shards_10000, shards_10000_grouped = load(raw, "shards_10000"), load(raw, "shards_10000_grouped")
    latency_grouped, idle_grouped = load(raw, "latency_grouped"), load(raw, "idle_grouped")
    idle_canned = {name: load(raw, f"idle_canned_{name}") for name in ("4", "4_grouped", "1000", "1000_grouped")}
    lane_counts = (1, 8, 64)
    lane_runs = {n: load(raw, f"lanes_{n}") for n in lane_counts}

    def med(runs, key):
        s = summary(runs, key)
        return s["median"] if s else None

    result = {
        "machine": machine(),
        "workload": "200,000 records of 100 bytes over 4 shards on kinesis-mock, from TRIM_HORIZON",
        "kcpy": {"cpu_us_per_record": med(kcpy, "cpu_us_per_record"), "peak_rss_mb": med(kcpy, "peak_rss_mb"),
                 "cpu_us_per_record_after_startup": med(kcpy, "cpu_us_per_record_after_startup"),
                 "cpu_s_startup": med(kcpy, "cpu_s_startup"),
                 "runs": {k: summary(kcpy, k) for k in ("cpu_us_per_record", "peak_rss_mb", "wall_s",
                                                          "cpu_us_per_record_after_startup")}},
        "boto3_loop": {"cpu_us_per_record": med(boto, "cpu_us_per_record"), "peak_rss_mb": med(boto, "peak_rss_mb"),
                       "runs": {k: summary(boto, k) for k in ("cpu_us_per_record", "peak_rss_mb", "wall_s")}},
        "python_kcpy": {"api": "ShardConsumer, one thread per shard",
                        "cpu_us_per_record": med(pk, "cpu_us_per_record"), "peak_rss_mb": med(pk, "peak_rss_mb"),
                        "runs": {k: summary(pk, k) for k in ("cpu_us_per_record", "peak_rss_mb", "wall_s")}},
        "python_kcpy_stream_consumer": {"api": "StreamConsumer, time-boxed",
                                        "cpu_us_per_record": med(stream, "cpu_us_per_record"),
                                        "records_per_s": med(stream, "records_per_s"),
                                        "peak_rss_mb": med(stream, "peak_rss_mb")},
        "python_kcpy_wheel": {"api": "for record in StreamConsumer(...) through the wheel built from kcpy-python, a dict per record",
                              "cpu_us_per_record": med(wheel, "cpu_us_per_record"),
                              "process_cpu_us_per_record": med(wheel, "process_cpu_us_per_record"),
                              "records_per_s": med(wheel, "records_per_s"),
                              "peak_rss_mb": med(wheel, "peak_rss_mb"),
                              "runs": {k: summary(wheel, k) for k in ("cpu_us_per_record", "peak_rss_mb", "wall_s",
                                                                       "records_per_s")}},
        "latency_ms": {"p50": med(latency, "p50"), "p99": med(latency, "p99"),
                       "put_record_ms_p50": med(latency, "put_record_ms_p50"),
                       "get_records_ms_p50": med(latency, "get_records_ms_p50"),
                       "runs": {k: summary(latency, k) for k in ("p50", "p99")}},
        "boto3_loop_latency_ms": {"p50": med(boto3_latency, "p50"), "p99": med(boto3_latency, "p99")},
        "idle_ms_per_empty_poll": med(idle, "ms_per_empty_poll"),
        "idle_runs": summary(idle, "ms_per_empty_poll"),
        "idle_grouped": {"what": "the same 4 idle shards with idle_poll_group(16): their polls at the same moments",
                         "ms_per_empty_poll": med(idle_grouped, "ms_per_empty_poll"),
                         "runs": summary(idle_grouped, "ms_per_empty_poll"),
                         "latency_ms": {"p50": med(latency_grouped, "p50"), "p99": med(latency_grouped, "p99"),
                                        "get_records_ms_p50": med(latency_grouped, "get_records_ms_p50")}},
        "idle_floor_ms_per_timer_wakeup": med(wakeups, "ms_per_wakeup"),
        "idle_floor_runs": summary(wakeups, "ms_per_wakeup"),
        "ceiling_records_per_s_per_core": med(ceiling, "records_per_s_per_core"),
        "ceiling_cpu_us_per_record": med(ceiling, "cpu_us_per_record"),
        "ceiling_allocations_per_record": med(ceiling_allocations, "allocations_per_record"),
        "metrics_recorded": {"recorder": "metrics-exporter-prometheus, in memory",
                             "kcpy_cpu_us_per_record": med(kcpy_metrics, "cpu_us_per_record"),
                             "ceiling_cpu_us_per_record": med(ceiling_metrics, "cpu_us_per_record"),
                             "runs": {"kcpy": summary(kcpy_metrics, "cpu_us_per_record"),
                                      "ceiling": summary(ceiling_metrics, "cpu_us_per_record")}},
        "ceiling_kpl": {"workload": "KPL aggregates of 100 user records of 100 bytes, 100 aggregates per GetRecords answer",
                        "cpu_us_per_user_record": med(ceiling_kpl, "cpu_us_per_record"),
                        "user_records_per_s_per_core": med(ceiling_kpl, "records_per_s_per_core"),
                        "peak_rss_mb": med(ceiling_kpl, "peak_rss_mb"),
                        "allocations_per_user_record": med(ceiling_kpl_allocations, "allocations_per_record"),
                        "runs": summary(ceiling_kpl, "cpu_us_per_record")},
        "shards_1000": {"peak_rss_mb": med(shards, "peak_rss_mb"),
                        "peak_rss_mb_at_half": med(shards, "peak_rss_mb_at_half"),
                        "cpu_s": med(shards, "cpu_s"), "cpu_s_second_half": med(shards, "cpu_s_second_half"),
                        "ms_per_empty_poll": med(shards, "ms_per_empty_poll"),
                        "build_s": med(shards, "build_s")},
        "shards_10000": {"workload": "10,000 idle shards of the canned server (empty pages) in one process",
                         "idle_ms": med(shards_10000, "idle_ms"),
                         "peak_rss_mb": med(shards_10000, "peak_rss_mb"),
                         "peak_rss_mb_after_build": med(shards_10000, "peak_rss_mb_after_build"),
                         "cpu_ms_per_shard_second": med(shards_10000, "cpu_ms_per_shard_second"),
                         "ms_per_empty_poll": med(shards_10000, "ms_per_empty_poll"),
                         "grouped_ms_per_empty_poll": med(shards_10000_grouped, "ms_per_empty_poll"),
                         "grouped_peak_rss_mb": med(shards_10000_grouped, "peak_rss_mb"),
                         "build_s": med(shards_10000, "build_s")},
        "idle_canned": {"what": "idle shards of the canned server, which answers calls in parallel: 4 shards at 200 ms (3 runs), 1,000 at 1 s (one run); each shard at its own moments, and in groups of 16",
                        "ms_per_empty_poll": {name: med(runs, "ms_per_empty_poll") for name, runs in idle_canned.items()},
                        "runs": {name: summary(runs, "ms_per_empty_poll") for name, runs in idle_canned.items()}},
        "checkpoints": checkpoints[-1] if checkpoints else None,
        "fanout": {"cpu_us_per_record": med(fanout, "cpu_us_per_record"),
                   "cpu_us_per_record_after_startup": med(fanout, "cpu_us_per_record_after_startup"),
                   "peak_rss_mb": med(fanout, "peak_rss_mb"),
                   "latency_ms": {"p50": med(fanout_latency, "p50"), "p99": med(fanout_latency, "p99")},
                   "added_ms_per_event": {"p50": med(fanout_latency, "added_ms_per_event_p50"),
                                          "p99": med(fanout_latency, "added_ms_per_event_p99"),
                                          "events": med(fanout_latency, "events")},
                   "idle_cpu_ms_per_shard_second": med(idle_fanout, "cpu_ms_per_shard_second"),
                   "runs": {k: summary(fanout, k) for k in ("cpu_us_per_record", "peak_rss_mb", "wall_s",
                                                            "cpu_us_per_record_after_startup")}},
        "idle_cpu_ms_per_shard_second": med(idle, "cpu_ms_per_shard_second"),
        "lanes": {"workload": "one shard of the canned GetRecords server, for_each_by_key with a handler awaiting 5 ms per record",
                  "records_per_s": {str(n): med(r, "records_per_s") for n, r in lane_runs.items()},
                  "of_ideal": {str(n): med(r, "of_ideal") for n, r in lane_runs.items()},
                  "handler_ms_mean": {str(n): med(r, "handler_ms_mean") for n, r in lane_runs.items()},
                  "runs": {str(n): summary(r, "records_per_s") for n, r in lane_runs.items()}},
    }
    ratios = {}
    k = result["kcpy"]["cpu_us_per_record"]
    for peer in ("boto3_loop", "python_kcpy", "python_kcpy_stream_consumer"):
        p = result[peer]["cpu_us_per_record"]
        if k and p:
            ratios[peer] = round(p / k, 1)
    result["kcpy_cpu_advantage"] = ratios
    w = result["python_kcpy_wheel"]
    old_shard, old_stream = result["python_kcpy"]["cpu_us_per_record"], result["python_kcpy_stream_consumer"]["records_per_s"]
    w["less_cpu_than_python_kcpy_shard_consumers"] = round(old_shard / w["cpu_us_per_record"], 1) if old_shard and w["cpu_us_per_record"] else None
    w["more_records_per_s_than_python_kcpy_stream_consumer"] = round(w["records_per_s"] / old_stream, 1) if old_stream and w["records_per_s"] else None
    result["ceiling"] = {"records_per_s_per_core": result["ceiling_records_per_s_per_core"],
                         "cpu_us_per_record": result["ceiling_cpu_us_per_record"],
                         "allocations_per_record": result["ceiling_allocations_per_record"]}
    s10k = result["shards_10000"]
    targets = [
        ("CPU per record ≤ 1 µs", k is not None and k <= 1.0, f"{k:.2f} µs" if k else "n/a"),
        ("≥ 20× less CPU than the boto3 loop", ratios.get("boto3_loop", 0) >= 20, f"{ratios.get('boto3_loop')}×"),
        ("peak RSS ≤ 32 MB", (result["kcpy"]["peak_rss_mb"] or 1e9) <= 32, f"{result['kcpy']['peak_rss_mb']:.1f} MB" if result["kcpy"]["peak_rss_mb"] else "n/a"),
        ("latency p50 ≤ 110 ms", (result["latency_ms"]["p50"] or 1e9) <= 110, unit(result["latency_ms"]["p50"], 1, "ms")),
        ("latency p99 ≤ 215 ms", (result["latency_ms"]["p99"] or 1e9) <= 215, unit(result["latency_ms"]["p99"], 1, "ms")),
        ("idle ≤ 0.1 ms CPU per empty poll", (result["idle_ms_per_empty_poll"] or 1e9) <= 0.1, unit(result["idle_ms_per_empty_poll"], 3, "ms")),
        ("fan-out: CPU per record ≤ polling's", (result["fanout"]["cpu_us_per_record"] or 1e9) <= (k or 0),
         unit(result["fanout"]["cpu_us_per_record"], 2, "µs") + " vs " + unit(k, 2, "µs")),
        ("fan-out: the consumer's own delay per event p99 ≤ 1 ms", (result["fanout"]["added_ms_per_event"]["p99"] or 1e9) <= 1.0,
         unit(result["fanout"]["added_ms_per_event"]["p99"], 3, "ms")),
        ("KPL: CPU per user record ≤ 0.5 µs when de-aggregating (canned server)",
         (result["ceiling_kpl"]["cpu_us_per_user_record"] or 1e9) <= 0.5,
         unit(result["ceiling_kpl"]["cpu_us_per_user_record"], 3, "µs") + " vs plain records' " + unit(result["ceiling_cpu_us_per_record"], 3, "µs")),
        ("KPL: de-aggregation allocates nothing per user record beyond the record's own (within 0.1 of plain records' allocations per record)",
         result["ceiling_kpl"]["allocations_per_user_record"] is not None and result["ceiling_allocations_per_record"] is not None
         and result["ceiling_kpl"]["allocations_per_user_record"] - result["ceiling_allocations_per_record"] < 0.1,
         unit(result["ceiling_kpl"]["allocations_per_user_record"], 3, "per user record") + " vs " + unit(result["ceiling_allocations_per_record"], 3, "per plain record")),
        ("metrics recorded: CPU per record within 5 % of without (emulator run)",
         (result["metrics_recorded"]["kcpy_cpu_us_per_record"] or 1e9) <= 1.05 * (k or 0),
         unit(result["metrics_recorded"]["kcpy_cpu_us_per_record"], 2, "µs") + " vs " + unit(k, 2, "µs")),
        ("metrics recorded: CPU per record within 5 % of without (ceiling run, less noise)",
         (result["metrics_recorded"]["ceiling_cpu_us_per_record"] or 1e9) <= 1.05 * (result["ceiling_cpu_us_per_record"] or 0),
         unit(result["metrics_recorded"]["ceiling_cpu_us_per_record"], 3, "µs") + " vs " + unit(result["ceiling_cpu_us_per_record"], 3, "µs")),
        *[(f"lanes: {n} lane{'s' if n > 1 else ''} with a 5 ms handler ≥ 0.9 × {n} × 200 records/s",
           (result["lanes"]["records_per_s"][str(n)] or 0) >= 0.9 * n * 200,
           unit(result["lanes"]["records_per_s"][str(n)], 0, "records/s")) for n in lane_counts],
        ("ceiling ≥ 1,000,000 records/s per core", (result["ceiling_records_per_s_per_core"] or 0) >= 1e6, unit(result["ceiling_records_per_s_per_core"], 0, "records/s")),
        ("round two: ceiling ≥ 3,000,000 records/s per core", (result["ceiling_records_per_s_per_core"] or 0) >= 3e6,
         unit(result["ceiling_records_per_s_per_core"], 0, "records/s")),
        ("round two: heap allocations per record on the ceiling run < 0.05",
         result["ceiling_allocations_per_record"] is not None and result["ceiling_allocations_per_record"] < 0.05,
         unit(result["ceiling_allocations_per_record"], 4, "per record")),
        ("round two: CPU per record on the emulator ≤ 0.5 µs", k is not None and k <= 0.5, f"{k:.2f} µs" if k else "n/a"),
        ("round two: ≥ 30× less CPU than the boto3 loop", ratios.get("boto3_loop", 0) >= 30, f"{ratios.get('boto3_loop', 'n/a')}×"),
        ("round two: idle ≤ 0.1 ms CPU per empty poll at 4 shards, polls in one group", (result["idle_grouped"]["ms_per_empty_poll"] or 1e9) <= 0.1,
         unit(result["idle_grouped"]["ms_per_empty_poll"], 3, "ms")),
        ("round two: idle ≤ 0.1 ms CPU per empty poll at 1,000 shards (emulator)", (result["shards_1000"]["ms_per_empty_poll"] or 1e9) <= 0.1,
         unit(result["shards_1000"]["ms_per_empty_poll"], 3, "ms")),
        ("round two: idle ≤ 0.1 ms CPU per empty poll at 1,000 shards in groups of 16 (canned server)",
         (result["idle_canned"]["ms_per_empty_poll"]["1000_grouped"] or 1e9) <= 0.1,
         unit(result["idle_canned"]["ms_per_empty_poll"]["1000_grouped"], 3, "ms")),
        ("round two: idle ≤ 0.1 ms CPU per empty poll at 4 shards in one group (canned server)",
         (result["idle_canned"]["ms_per_empty_poll"]["4_grouped"] or 1e9) <= 0.1,
         unit(result["idle_canned"]["ms_per_empty_poll"]["4_grouped"], 3, "ms")),
        ("round two: latency p50 ≤ 110 ms with the polls in one group", (result["idle_grouped"]["latency_ms"]["p50"] or 1e9) <= 110,
         unit(result["idle_grouped"]["latency_ms"]["p50"], 1, "ms")),
        ("round two: latency p99 ≤ 215 ms with the polls in one group", (result["idle_grouped"]["latency_ms"]["p99"] or 1e9) <= 215,
         unit(result["idle_grouped"]["latency_ms"]["p99"], 1, "ms")),
        ("Python wheel: ≥ 10× less CPU per record than Python kcpy's ShardConsumer × 4 threads",
         (w["less_cpu_than_python_kcpy_shard_consumers"] or 0) >= 10, f"{w['less_cpu_than_python_kcpy_shard_consumers']}×"),
        ("Python wheel: ≥ 100× the records/s of Python kcpy's StreamConsumer",
         (w["more_records_per_s_than_python_kcpy_stream_consumer"] or 0) >= 100,
         f"{w['more_records_per_s_than_python_kcpy_stream_consumer']}×"),
        ("round two: 10,000 shards in one process, peak RSS ≤ 150 MB", (s10k["peak_rss_mb"] or 1e9) <= 150,
         unit(s10k["peak_rss_mb"], 1, "MB")),
    ]
    result["targets"] = [dict(target=t, met=bool(m), measured=v) for t, m, v in targets]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "latest.json"), "w") as f:
        json.dump(result, f, indent=2)

    def fmt(x, digits=2):
        return "n/a" if x is None else f"{x:,.{digits}f}"

    def span3(s):
        return "n/a" if not s else f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"

    lines = [
        "# kcpy benchmark results",
        "",
        f"{result['workload']}; medians of {len(kcpy)} runs (min–max in brackets), except the rows marked one "
        "run. Latency, idle and 1,000-shard figures come from a second, fresh emulator that holds only their "
        "own streams; latency and idle use `idle_interval(200 ms)` (5 calls/s per shard; the default is 1 s).",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['machine']['memory_gb']} GB, {result['machine']['os']}, {result['machine']['rustc']}, "
        f"Python {result['machine']['python']}, {result['machine']['date']}.",
        "",
        "| client | CPU per record (µs) | peak RSS (MB) | kcpy uses less CPU by |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (("kcpy", "kcpy"), ("boto3_loop", "boto3 hand loop (1 thread, Limit 10000)"),
                        ("python_kcpy", "Python kcpy 0.1.7 `ShardConsumer` × 4 threads")):
        runs = result[name]["runs"]
        cpu, rss = runs["cpu_us_per_record"], runs["peak_rss_mb"]
        span = lambda s: f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})" if s else "n/a"
        ratio = "—" if name == "kcpy" else f"{ratios.get(name, 'n/a')}×"
        lines.append(f"| {label} | {span(cpu)} | {span(rss)} | {ratio} |")
    s = result["python_kcpy_stream_consumer"]
    lines.append(f"| Python kcpy 0.1.7 `StreamConsumer` (time-boxed) | {fmt(s['cpu_us_per_record'])} | "
                 f"{fmt(s['peak_rss_mb'])} | {ratios.get('python_kcpy_stream_consumer', 'n/a')}× "
                 f"(one run of 20 s, start-up included; it reads {fmt(s['records_per_s'], 1)} records/s) |")
    runs = w["runs"]
    if runs["cpu_us_per_record"]:
        lines.append(f"| the Python package built here (kcpy-python's wheel): `for record in StreamConsumer(...)`, a dict per record "
                     f"| {fmt(runs['cpu_us_per_record']['median'])} ({fmt(runs['cpu_us_per_record']['min'])}–{fmt(runs['cpu_us_per_record']['max'])}) "
                     f"| {fmt(w['peak_rss_mb'])} | {w['less_cpu_than_python_kcpy_shard_consumers']}× less than Python kcpy's `ShardConsumer` × 4 "
                     f"(CPU from the consumer's construction to its close; the whole process, with Python's start and imports: "
                     f"{fmt(w['process_cpu_us_per_record'])} µs); "
                     f"{fmt(w['records_per_s'], 0)} records/s, {w['more_records_per_s_than_python_kcpy_stream_consumer']}× its `StreamConsumer`'s |")
    c = result["checkpoints"] or {}
    lines += [
        "",
        "| measure | result |",
        "| --- | --- |",
        f"| kcpy without its start-up (client set-up, ListShards, iterators: {fmt(result['kcpy']['cpu_s_startup'], 3)} s CPU) | {fmt(result['kcpy']['cpu_us_per_record_after_startup'])} µs CPU per record |",
        f"| latency put → delivery at 5 GetRecords/s per shard | p50 {fmt(result['latency_ms']['p50'], 1)} ms, p99 {fmt(result['latency_ms']['p99'], 1)} ms |",
        f"| a boto3 loop after it on the same emulator (a thread per shard, GetRecords every 200 ms) | p50 {fmt(result['boto3_loop_latency_ms']['p50'], 1)} ms, p99 {fmt(result['boto3_loop_latency_ms']['p99'], 1)} ms |",
        f"| the emulator's round trips during the latency runs | PutRecord p50 {fmt(result['latency_ms']['put_record_ms_p50'], 1)} ms, GetRecords p50 {fmt(result['latency_ms']['get_records_ms_p50'], 1)} ms |",
        f"| enhanced fan-out, same backlog | {fmt(result['fanout']['cpu_us_per_record'])} µs CPU per record ({fmt(result['fanout']['cpu_us_per_record_after_startup'])} µs without start-up), peak RSS {fmt(result['fanout']['peak_rss_mb'], 1)} MB |",
        f"| latency put → delivery through enhanced fan-out (the emulator sends one event per second per shard) | p50 {fmt(result['fanout']['latency_ms']['p50'], 1)} ms, p99 {fmt(result['fanout']['latency_ms']['p99'], 1)} ms |",
        f"| enhanced fan-out: the consumer's own delay per event, from its bytes reaching the HTTP body to its last record returned by next() ({fmt(result['fanout']['added_ms_per_event']['events'], 0)} events per run) | p50 {fmt(result['fanout']['added_ms_per_event']['p50'], 3)} ms, p99 {fmt(result['fanout']['added_ms_per_event']['p99'], 3)} ms |",
        f"| idle cost | {span3(result['idle_runs'])} ms CPU per empty poll ({fmt(result['idle_cpu_ms_per_shard_second'], 3)} ms per shard-second) |",
        f"| idle cost with the 4 shards' polls in one group (`idle_poll_group(16)`) | {span3(result['idle_grouped']['runs'])} ms CPU per empty poll; latency p50 {fmt(result['idle_grouped']['latency_ms']['p50'], 1)} ms, p99 {fmt(result['idle_grouped']['latency_ms']['p99'], 1)} ms, GetRecords p50 {fmt(result['idle_grouped']['latency_ms']['get_records_ms_p50'], 1)} ms (the emulator answers the group's calls one after another) |",
        f"| idle cost on the canned server, which answers calls in parallel: 4 shards at 200 ms, each at its own moments / in one group | {span3(result['idle_canned']['runs']['4'])} / {span3(result['idle_canned']['runs']['4_grouped'])} ms CPU per empty poll |",
        f"| the same, 1,000 shards at 1 s (one run each) | {fmt(result['idle_canned']['ms_per_empty_poll']['1000'], 3)} / {fmt(result['idle_canned']['ms_per_empty_poll']['1000_grouped'], 3)} ms CPU per empty poll (groups of 16) |",
        f"| idle cost through enhanced fan-out | {fmt(result['fanout']['idle_cpu_ms_per_shard_second'], 3)} ms CPU per shard-second |",
        f"| a bare timer wakeup, nothing else (four tasks every 200 ms, 50 ms apart); an empty poll wakes twice, for its timer and its response | {span3(result['idle_floor_runs'])} ms CPU per wakeup |",
        f"| consumer ceiling (canned GetRecords server) | {fmt(result['ceiling_records_per_s_per_core'], 0)} records/s per core ({fmt(result['ceiling_cpu_us_per_record'], 3)} µs per record) |",
        f"| consumer ceiling with KPL aggregates (100 user records of 100 B each), de-aggregated | {fmt(result['ceiling_kpl']['user_records_per_s_per_core'], 0)} user records/s per core ({fmt(result['ceiling_kpl']['cpu_us_per_user_record'], 3)} µs per user record) |",
        f"| heap allocations per record on the ceiling run (a counting build, one run): plain records, user records of KPL aggregates | {fmt(result['ceiling_allocations_per_record'], 3)}, {fmt(result['ceiling_kpl']['allocations_per_user_record'], 3)} |",
        f"| with the consumer's metrics recorded by a Prometheus recorder (in memory) | {fmt(result['metrics_recorded']['kcpy_cpu_us_per_record'])} µs CPU per record on the emulator, {fmt(result['metrics_recorded']['ceiling_cpu_us_per_record'], 3)} µs on the ceiling run |",
        f"| 1,000 shards, one process, default 1 s idle interval (one run of 30 s) | peak RSS {fmt(result['shards_1000']['peak_rss_mb'], 1)} MB (at half time {fmt(result['shards_1000']['peak_rss_mb_at_half'], 1)} MB), {fmt(result['shards_1000']['cpu_s_second_half'], 2)} s CPU in the last 15 s, {fmt(result['shards_1000']['ms_per_empty_poll'], 3)} ms per empty poll |",
        f"| 10,000 idle shards of the canned server in one process, polled every {fmt(s10k['idle_ms'], 0)} ms (one run) | peak RSS {fmt(s10k['peak_rss_mb'], 1)} MB ({fmt(s10k['peak_rss_mb_after_build'], 1)} MB once built, in {fmt(s10k['build_s'], 1)} s), {fmt(s10k['cpu_ms_per_shard_second'], 3)} ms CPU per shard-second, {fmt(s10k['ms_per_empty_poll'], 3)} ms per empty poll ({fmt(s10k['grouped_ms_per_empty_poll'], 3)} ms in groups of 16, peak RSS {fmt(s10k['grouped_peak_rss_mb'], 1)} MB) |",
        f"| memory store (one run) | {fmt(c.get('memory_saves_per_s'), 0)} saves/s |",
        f"| SQLite store, WAL, synchronous=FULL (one run) | {fmt(c.get('sqlite_saves_per_s'), 0)} saves/s, so {fmt(c.get('sqlite_records_per_s_with_batching'), 0)} records/s checkpointed with one save per {fmt(c.get('batch_records'), 0)} records |",
        *[f"| one shard in {n} per-key lane{'s' if n > 1 else ''}, a handler awaiting a service that answers in 5 ms (its calls took {fmt(result['lanes']['handler_ms_mean'][str(n)], 2)} ms on average) | {fmt(result['lanes']['records_per_s'][str(n)], 0)} records/s, {fmt(100 * (result['lanes']['of_ideal'][str(n)] or 0), 0)} % of {n} × 200 |"
          for n in lane_counts],
        "",
        "| target | met | measured |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {t['target']} | {'yes' if t['met'] else 'no'} | {t['measured']} |" for t in result["targets"]]
    with open(os.path.join(out, "latest.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

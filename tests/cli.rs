//! The `kcpy` command line against kinesis-mock and a SQLite store: what it
//! prints, and its exit codes on bad input.

mod support;

use std::process::Output;

use support::TestStream;

async fn kcpy(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kcpy"))
        .args(args)
        .args(["--endpoint", &support::endpoint()])
        .output()
        .await
        .expect("run kcpy")
}

/// `kcpy checkpoints SUBCOMMAND` for one consumer of one stream, then `rest`.
fn checkpoints<'a>(
    subcommand: &'a str,
    store: &'a str,
    consumer: &'a str,
    stream: &'a str,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "checkpoints",
        subcommand,
        "--store",
        store,
        "--consumer-name",
        consumer,
        "--stream",
        stream,
    ];
    args.extend_from_slice(rest);
    args
}

fn lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_backlog_and_stops_at_the_tip_and_a_second_run_resumes_after_its_checkpoints() {
    let stream = TestStream::create("cli-tail", 2).await;
    let puts = stream.put_many("cli", 40, 7).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}", dir.path().join("cli.db").display());
    let first = kcpy(&["tail", &stream.name, "--trim-horizon", "--store", &store, "--max", "25"]).await;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first = lines(&first);
    assert_eq!(first.len(), 25);
    assert!(first.iter().all(|l| l["approximate_arrival_timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z'))));
    let second = kcpy(&["tail", &stream.name, "--trim-horizon", "--store", &store]).await;
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let second = lines(&second);
    let mut data: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|l| l["data"].as_str().expect("data").to_owned())
        .collect();
    data.sort();
    let mut expected: Vec<String> = puts.iter().map(|p| p.data.clone()).collect();
    expected.sort();
    assert_eq!(
        data, expected,
        "every record once over the two runs: the second resumed after the first's checkpoints"
    );

    // The checkpoints the runs left, as the list shows them.
    let listed = kcpy(&checkpoints("list", &store, "kcpy-tail", &stream.name, &["--json"])).await;
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed = lines(&listed);
    assert_eq!(listed.len(), 2);
    for shard in &listed {
        let last = puts
            .iter()
            .rev()
            .find(|p| Some(p.shard_id.as_str()) == shard["shard_id"].as_str())
            .map(|p| p.sequence_number.to_string());
        assert_eq!(shard["checkpoint"].as_str().map(str::to_owned), last, "{shard}");
        assert_eq!(shard["millis_behind_latest"], 0, "caught up: {shard}");
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_raw_hex_and_base64_and_filters_by_shard() {
    let stream = TestStream::create("cli-format", 2).await;
    let puts = stream.put(&[("k".into(), "hello".into())]).await;
    let shard = &puts[0].shard_id;
    for (format, expected) in [("raw", "hello"), ("hex", "68656c6c6f"), ("base64", "aGVsbG8=")] {
        let out = kcpy(&[
            "tail",
            &stream.name,
            "--trim-horizon",
            "--format",
            format,
            "--shard",
            shard,
        ])
        .await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{expected}\n"),
            "{format}"
        );
    }
    let other = kcpy(&[
        "tail",
        &stream.name,
        "--trim-horizon",
        "--shard",
        "shardId-999999999999",
    ])
    .await;
    assert!(other.status.success());
    assert!(other.stdout.is_empty(), "no record of another shard");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_the_shards_with_their_ranges_and_parents() {
    let stream = TestStream::create("cli-describe", 1).await;
    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    let out = kcpy(&["streams", "describe", &stream.name, "--json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let described = &lines(&out)[0];
    let shards = described["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3);
    assert_eq!(shards[0]["state"], "closed");
    for child in &shards[1..] {
        assert_eq!(child["state"], "open");
        assert_eq!(child["parents"][0], parent.shard_id.as_str());
    }
    assert_eq!(shards[0]["starting_hash_key"], "0");
    let table = kcpy(&["streams", "describe", &stream.name]).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains(&parent.shard_id));
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_line_on_stderr_and_a_failing_exit() {
    for (args, code) in [
        (vec!["tail", "no-such-stream", "--trim-horizon"], 1),
        (vec!["streams", "describe", "no-such-stream"], 1),
        (vec!["tail", "s", "--at", "yesterday"], 2),
        (vec!["tail", "s", "--store", "ftp://nowhere"], 1),
        (checkpoints("list", "sqlite:///nonexistent/dir/x.db", "c", "s", &[]), 1),
    ] {
        let out = kcpy(&args).await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if code == 1 {
            assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line: {stderr}");
            assert!(stderr.starts_with("kcpy: "), "{stderr}");
        }
    }
}

/// `kcpy` with `input` on its stdin.
async fn kcpy_answering(args: &[&str], input: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kcpy"))
        .args(args)
        .args(["--endpoint", &support::endpoint()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kcpy");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("answer");
    drop(stdin);
    child.wait_with_output().await.expect("kcpy ends")
}

fn data_of(output: &Output) -> Vec<String> {
    let mut data: Vec<String> = lines(output)
        .iter()
        .map(|l| l["data"].as_str().expect("data").to_owned())
        .collect();
    data.sort();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_rewinds_a_consumer_after_asking_and_the_next_run_starts_where_it_says() {
    let stream = TestStream::create("cli-reset", 2).await;
    let puts = stream.put_many("r", 30, 5).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}", dir.path().join("reset.db").display());
    let tail = [
        "tail",
        stream.name.as_str(),
        "--trim-horizon",
        "--store",
        store.as_str(),
    ];
    assert_eq!(data_of(&kcpy(&tail).await).len(), 30, "the first run reads everything");
    assert!(data_of(&kcpy(&tail).await).is_empty(), "the second resumes after it");

    let reset = checkpoints("reset", &store, "kcpy-tail", &stream.name, &["--to-trim-horizon"]);
    // Asked, and not answered yes: nothing changes.
    let declined = kcpy_answering(&reset, "n\n").await;
    assert_eq!(declined.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&declined.stderr).contains("nothing changed"));
    assert!(data_of(&kcpy(&tail).await).is_empty(), "still after everything");
    // Answered yes: the plan is printed, then done.
    let done = kcpy_answering(&reset, "y\n").await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("-> AT_TIMESTAMP:0"));
    let mut all: Vec<String> = puts.iter().map(|p| p.data.clone()).collect();
    all.sort();
    assert_eq!(data_of(&kcpy(&tail).await), all, "from the oldest record again");

    // One shard, to a sequence number: the next run resumes right after it.
    let shard = puts[0].shard_id.clone();
    let on_shard: Vec<&support::Put> = puts.iter().filter(|p| p.shard_id == shard).collect();
    let to = on_shard[2].sequence_number.to_string();
    let one = kcpy(&checkpoints(
        "reset",
        &store,
        "kcpy-tail",
        &stream.name,
        &["--shard", &shard, "--to", &to, "--yes"],
    ))
    .await;
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let mut after: Vec<String> = on_shard[3..].iter().map(|p| p.data.clone()).collect();
    after.sort();
    assert_eq!(data_of(&kcpy(&tail).await), after);

    let bad = kcpy(&checkpoints(
        "reset",
        &store,
        "kcpy-tail",
        &stream.name,
        &["--shard", &shard, "--to", "4.2e+55", "--yes"],
    ))
    .await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is no checkpoint"));
    stream.delete().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_refuses_while_a_worker_holds_a_lease_and_with_force_fences_it_out() {
    use kcpy::{Checkpoint, CheckpointError, CheckpointKey, LeaseStore, PostgresCheckpointStore};

    let stream = TestStream::create("cli-reset-lease", 1).await;
    let shard = stream.open_shards().await.remove(0).shard_id;
    let url = support::postgres_url();
    let store = PostgresCheckpointStore::connect(&url).await.expect("postgres");
    let consumer = support::unique_name("reset-group");
    let key = CheckpointKey::new(&consumer, &stream.name, &shard);
    store.create_lease(&key, &[]).await.expect("create");
    let lease = store
        .list_leases(&consumer, &stream.name)
        .await
        .expect("list")
        .remove(0);
    let held = store.take_lease(&lease, "worker-x").await.expect("take");
    let seq = kcpy::SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").expect("valid");
    store
        .save_leased(&held, &Checkpoint::Sequence(seq.clone()))
        .await
        .expect("save");

    let reset = checkpoints("reset", &url, &consumer, &stream.name, &["--to-latest", "--yes"]);
    let refused = kcpy(&reset).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("worker-x") && stderr.contains("--force"), "{stderr}");
    let stored = store
        .list_leases(&consumer, &stream.name)
        .await
        .expect("list")
        .remove(0);
    assert_eq!(
        (stored.owner.as_deref(), stored.checkpoint),
        (Some("worker-x"), Some(Checkpoint::Sequence(seq)))
    );

    let forced = kcpy(&[&reset[..], &["--force"]].concat()).await;
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    let after = store
        .list_leases(&consumer, &stream.name)
        .await
        .expect("list")
        .remove(0);
    assert_eq!(after.owner, None, "the lease is free");
    assert!(
        matches!(after.checkpoint, Some(Checkpoint::AtTimestamp(_))),
        "{:?}",
        after.checkpoint
    );
    assert!(matches!(
        store.save_leased(&held, &Checkpoint::ShardEnd).await,
        Err(CheckpointError::LeaseLost { .. })
    ));
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_oldest_stops_at_the_tip_of_a_stream_written_to_all_the_time() {
    let stream = TestStream::create("cli-busy", 2).await;
    let before = stream.put_many("before", 50, 7).await;
    let producer = support::Producer::start(&stream, 7);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        kcpy(&["tail", &stream.name, "--trim-horizon"]),
    )
    .await
    .expect("tail stops once caught up, though records keep coming");
    producer.stop().await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = lines(&out)
        .iter()
        .map(|l| l["data"].as_str().expect("data").to_owned())
        .collect();
    assert!(
        before.iter().all(|p| printed.contains(&p.data)),
        "everything put before it started"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_resharded_stream_restarts_its_roots_and_lets_children_wait_for_them() {
    let stream = TestStream::create("cli-reset-split", 1).await;
    let mut puts = stream.put_many("p", 20, 5).await;
    let parent = stream.open_shards().await.remove(0);
    stream.split(&parent).await;
    puts.extend(stream.put_many("c", 20, 5).await);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}", dir.path().join("split.db").display());
    let tail = [
        "tail",
        stream.name.as_str(),
        "--trim-horizon",
        "--store",
        store.as_str(),
    ];
    assert_eq!(data_of(&kcpy(&tail).await).len(), 40);

    let reset = kcpy(&checkpoints(
        "reset",
        &store,
        "kcpy-tail",
        &stream.name,
        &["--to-trim-horizon", "--yes"],
    ))
    .await;
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    let plan = String::from_utf8_lossy(&reset.stdout);
    assert!(
        plan.contains(&format!("{}: SHARD_END -> AT_TIMESTAMP:0", parent.shard_id)),
        "{plan}"
    );
    assert_eq!(plan.matches("-> none (after its parents").count(), 2, "{plan}");

    let again = kcpy(&tail).await;
    let again = lines(&again);
    assert_eq!(again.len(), 40, "everything again");
    // The parent's records all come before any child's.
    let first_child = again
        .iter()
        .position(|l| l["shard_id"] != parent.shard_id.as_str())
        .expect("children read");
    assert!(again[first_child..]
        .iter()
        .all(|l| l["shard_id"] != parent.shard_id.as_str()));
    assert_eq!(first_child, 20);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_at_a_sequence_number_starts_at_that_record_of_its_shard() {
    let stream = TestStream::create("cli-at-seq", 2).await;
    let puts = stream.put_many("s", 30, 5).await;
    let shard = puts[0].shard_id.clone();
    let on_shard: Vec<&support::Put> = puts.iter().filter(|p| p.shard_id == shard).collect();
    let at = on_shard[4].sequence_number.to_string();
    let out = kcpy(&["tail", &stream.name, "--at-sequence", &at, "--shard", &shard]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = lines(&out)
        .iter()
        .map(|l| l["data"].as_str().expect("data").to_owned())
        .collect();
    let expected: Vec<String> = on_shard[4..].iter().map(|p| p.data.clone()).collect();
    assert_eq!(printed, expected, "from that record on, in order");
    let without_shard = kcpy(&["tail", &stream.name, "--at-sequence", &at]).await;
    assert_eq!(without_shard.status.code(), Some(2), "--at-sequence needs --shard");
    stream.delete().await;
}

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
    let listed = kcpy(&[
        "checkpoints",
        "list",
        "--store",
        &store,
        "--consumer-name",
        "kcpy-tail",
        "--stream",
        &stream.name,
        "--json",
    ])
    .await;
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
        (
            vec![
                "checkpoints",
                "list",
                "--store",
                "sqlite:///nonexistent/dir/x.db",
                "--consumer-name",
                "c",
                "--stream",
                "s",
            ],
            1,
        ),
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

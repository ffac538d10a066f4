//! KPL aggregated records made by the Python `aws-kinesis-agg` aggregator
//! (1.2.3, in the venv `scripts/kpl-venv` makes; `KCPY_KPL_PYTHON` names its
//! python), and putting them into a test stream.

use std::io::Write;
use std::process::{Command, Stdio};

use aws_sdk_kinesis::primitives::Blob;
use kcpy::{Record, SequenceNumber};

use super::TestStream;

/// One user record to aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub partition_key: String,
    pub data: Vec<u8>,
    pub explicit_hash_key: Option<String>,
}

impl User {
    pub fn new(partition_key: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            partition_key: partition_key.into(),
            data: data.into(),
            explicit_hash_key: None,
        }
    }

    pub fn with_hash_key(mut self, hash_key: impl Into<String>) -> Self {
        self.explicit_hash_key = Some(hash_key.into());
        self
    }
}

/// A Kinesis record the aggregator made: what to put.
#[derive(Debug, Clone)]
pub struct Aggregated {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
    pub users: Vec<User>,
}

/// A user record as it was put: inside which Kinesis record, at which place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserPut {
    pub shard_id: String,
    pub sequence_number: SequenceNumber,
    pub sub_sequence_number: u64,
    pub partition_key: String,
    pub data: Vec<u8>,
    pub explicit_hash_key: Option<String>,
}

impl UserPut {
    /// How a delivered record compares with what was put.
    pub fn of(record: &Record) -> Self {
        Self {
            shard_id: record.shard_id.to_string(),
            sequence_number: record.sequence_number.clone(),
            sub_sequence_number: record.sub_sequence_number.expect("a user record of an aggregate"),
            partition_key: record.partition_key.to_string(),
            data: record.data.to_vec(),
            explicit_hash_key: record.explicit_hash_key.clone(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex from the aggregator"))
        .collect()
}

/// Runs the Python aggregator: each inner list becomes one Kinesis record.
pub fn aggregate(aggregates: &[Vec<User>]) -> Vec<Aggregated> {
    let python = std::env::var("KCPY_KPL_PYTHON").unwrap_or_else(|_| {
        panic!(
            "KCPY_KPL_PYTHON is not set: run the tests with scripts/test, or run scripts/kpl-venv and export what it prints"
        )
    });
    let input: Vec<Vec<serde_json::Value>> = aggregates
        .iter()
        .map(|users| {
            users
                .iter()
                .map(|user| serde_json::json!([user.partition_key, hex(&user.data), user.explicit_hash_key]))
                .collect()
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kpl_aggregate.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the Python aggregator");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(&input).expect("json").as_bytes())
        .expect("write to the aggregator");
    let output = child.wait_with_output().expect("the aggregator runs");
    assert!(output.status.success(), "the aggregator failed");
    let made: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("the aggregator's JSON");
    assert_eq!(made.len(), aggregates.len());
    made.into_iter()
        .zip(aggregates)
        .map(|(record, users)| Aggregated {
            partition_key: record["partition_key"].as_str().expect("partition key").to_owned(),
            explicit_hash_key: record["explicit_hash_key"].as_str().map(str::to_owned),
            data: unhex(record["data"].as_str().expect("data")),
            users: users.clone(),
        })
        .collect()
}

impl TestStream {
    /// Puts each aggregate as one Kinesis record, in order (with
    /// `hash_key`, when given, as every one's explicit hash key); returns
    /// their user records as put.
    pub async fn put_aggregates(&self, aggregates: &[Aggregated], hash_key: Option<&str>) -> Vec<UserPut> {
        let mut puts = Vec::new();
        for aggregate in aggregates {
            let output = self
                .client
                .put_record()
                .stream_name(&self.name)
                .partition_key(&aggregate.partition_key)
                .set_explicit_hash_key(
                    hash_key
                        .map(str::to_owned)
                        .or_else(|| aggregate.explicit_hash_key.clone()),
                )
                .data(Blob::new(aggregate.data.clone()))
                .send()
                .await
                .expect("PutRecord");
            let sequence_number: SequenceNumber = output.sequence_number.parse().expect("valid");
            for (number, user) in (0u64..).zip(&aggregate.users) {
                puts.push(UserPut {
                    shard_id: output.shard_id.clone(),
                    sequence_number: sequence_number.clone(),
                    sub_sequence_number: number,
                    partition_key: user.partition_key.clone(),
                    data: user.data.clone(),
                    explicit_hash_key: user.explicit_hash_key.clone(),
                });
            }
        }
        puts
    }
}

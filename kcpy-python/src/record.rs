//! A record as the Python kcpy package (boto3's `get_records`) shapes it: a
//! dict.

use std::time::{SystemTime, UNIX_EPOCH};

use kcpy::Record;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDateTime, PyDict, PyString, PyTzInfo};

/// What converting a record reuses: its shard's id as a Python string (a
/// shard's records come in runs), UTC, and the last arrival time's
/// `datetime` (records put together arrive in the same millisecond; a
/// `datetime` is immutable, so records may share one).
pub(crate) struct Converter {
    shard: Option<(std::sync::Arc<str>, Py<PyString>)>,
    utc: Option<Py<PyTzInfo>>,
    arrival: Option<(SystemTime, Py<PyDateTime>)>,
}

impl Converter {
    pub(crate) fn new() -> Self {
        Self {
            shard: None,
            utc: None,
            arrival: None,
        }
    }

    /// The record as a dict with boto3's keys, plus `ShardId`, and
    /// `SubSequenceNumber` for a user record of a KPL aggregate.
    pub(crate) fn dict<'py>(&mut self, py: Python<'py>, record: &Record) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        let arrival = match record.approximate_arrival_timestamp {
            Some(time) => Some(self.datetime(py, time)?),
            None => None,
        };
        dict.set_item(intern!(py, "ApproximateArrivalTimestamp"), arrival)?;
        dict.set_item(intern!(py, "Data"), PyBytes::new(py, &record.data))?;
        dict.set_item(intern!(py, "PartitionKey"), PyString::new(py, &record.partition_key))?;
        dict.set_item(
            intern!(py, "SequenceNumber"),
            PyString::new(py, record.sequence_number.as_str()),
        )?;
        dict.set_item(intern!(py, "ShardId"), self.shard_id(py, &record.shard_id))?;
        if let Some(number) = record.sub_sequence_number {
            dict.set_item(intern!(py, "SubSequenceNumber"), number)?;
        }
        Ok(dict)
    }

    fn shard_id<'py>(&mut self, py: Python<'py>, id: &std::sync::Arc<str>) -> Bound<'py, PyString> {
        match &self.shard {
            Some((known, text)) if std::sync::Arc::ptr_eq(known, id) => text.bind(py).clone(),
            _ => {
                let text = PyString::new(py, id);
                self.shard = Some((std::sync::Arc::clone(id), text.clone().unbind()));
                text
            }
        }
    }

    /// An aware `datetime` in UTC (boto3 gives an aware one too).
    fn datetime<'py>(&mut self, py: Python<'py>, time: SystemTime) -> PyResult<Bound<'py, PyDateTime>> {
        if let Some((known, datetime)) = &self.arrival {
            if *known == time {
                return Ok(datetime.bind(py).clone());
            }
        }
        let utc = match &self.utc {
            Some(utc) => utc.bind(py).clone(),
            None => {
                let utc = PyTzInfo::utc(py)?.to_owned();
                self.utc = Some(utc.clone().unbind());
                utc
            }
        };
        let seconds = match time.duration_since(UNIX_EPOCH) {
            Ok(since) => since.as_secs_f64(),
            Err(before) => -before.duration().as_secs_f64(),
        };
        let datetime = PyDateTime::from_timestamp(py, seconds, Some(&utc))?;
        self.arrival = Some((time, datetime.clone().unbind()));
        Ok(datetime)
    }
}

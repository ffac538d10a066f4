//! The Python package `kcpy`: the Python kcpy package's API
//! (`StreamConsumer`, records as dicts) on kcpy's Rust consumer.

mod consumer;
mod errors;
mod options;
mod record;

use pyo3::prelude::*;

/// The extension module; `python/kcpy/__init__.py` is its face.
#[pymodule]
fn _kcpy(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<consumer::StreamConsumer>()?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

//! Examples run as processes by the end-to-end tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The binary of example `name`, built (or found up to date) once per test
/// binary by `cargo build --example` with every feature.
///
/// `cargo test --all-targets` builds examples as test harnesses, not as the
/// programs they are, so the tests build the program themselves; cargo
/// allows that while tests run, and with the artifacts the test build left
/// it only links the example.
pub fn example(name: &'static str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<&'static str, Result<PathBuf, String>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    built
        .get_or_insert_with(HashMap::new)
        .entry(name)
        .or_insert_with(|| build(name))
        .clone()
        .unwrap_or_else(|error| panic!("{error}"))
}

fn build(name: &str) -> Result<PathBuf, String> {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--all-features", "--locked", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cannot run cargo to build example {name}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --example {name} failed: {status}"));
    }
    // The test binary lives in target/<profile>/deps; the examples beside it.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("no target directory")?
        .join("examples")
        .join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("cargo built example {name} but {} is missing", path.display()))
    }
}

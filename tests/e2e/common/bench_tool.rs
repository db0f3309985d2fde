//! The capacity tool's binary, for the tests that run it.
//!
//! `hasses-bench` is another package of the workspace (`hasses-bench/`), and Cargo tells a test
//! only where its own package's binaries are (`CARGO_BIN_EXE_*`). So the first test that needs it
//! builds it with the Cargo that builds the tests, in their profile and target directory (a
//! no-op when it is up to date), and takes its path from Cargo's own report of that build rather
//! than guessing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The path of a `hasses-bench` built from this checkout; builds it on first use.
pub fn path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(build)
}

fn build() -> PathBuf {
    // A test runs as `<target dir>/<profile dir>/deps/<test>-<hash>`.
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test runs from <profile>/deps");
    let target_dir = profile_dir.parent().expect("the profile directory is in the target directory");
    // `debug` holds the dev (and test) profile's output; others are named after their profile.
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("no profile directory in {}", exe.display()),
    };
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "hasses-bench", "--bin", "hasses-bench"])
        .args(["--profile", profile, "--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build -p hasses-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo build -p hasses-bench failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == "hasses-bench"
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build -p hasses-bench reported no executable:\n{stderr}"))
}

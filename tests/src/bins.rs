//! Where the workspace's binaries are for cross-process tests.
//!
//! Integration tests of this package cannot use `env!("CARGO_BIN_EXE_...")`
//! of another package, so the binaries are taken from the profile directory
//! of the running test executable (`target/debug/` when the test is
//! `target/debug/deps/faults-…`). Before the first use in a test process,
//! `cargo build -p sad-agent -p sad-coordinator --bins` runs once (guarded by
//! a `OnceLock`) with the same target directory and profile, so a stale
//! binary is never tested; set `SAD_NO_BUILD=1` to skip that step and use
//! what is there, or `SAD_BIN_DIR` to take the binaries from elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The edge agent's binary name.
pub const AGENT_BIN: &str = "anomaly-agent";
/// The coordinator's binary name.
pub const COORDINATOR_BIN: &str = "anomaly-coordinator";

/// The profile directory of the running test executable (`…/target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("the test executable's directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

fn build_once(dir: &Path) -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if std::env::var("SAD_NO_BUILD").is_ok_and(|v| v == "1") {
                return Ok(());
            }
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the workspace root")
                .to_path_buf();
            let profile = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "debug".into());
            let target_dir = dir.parent().unwrap_or(dir);
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(&workspace)
                .args([
                    "build",
                    "-p",
                    "sad-agent",
                    "-p",
                    "sad-coordinator",
                    "--bins",
                ])
                .arg("--target-dir")
                .arg(target_dir);
            match profile.as_str() {
                "debug" => {}
                "release" => {
                    cmd.arg("--release");
                }
                other => {
                    cmd.args(["--profile", other]);
                }
            }
            let status = cmd
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("cargo build of the binaries failed: {status}"))
            }
        })
        .clone()
}

/// Path of a workspace binary (`anomaly-agent`, `anomaly-coordinator`), built once if needed.
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SAD_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let dir = profile_dir();
    if let Err(e) = build_once(&dir) {
        panic!("{e}");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found (build it with `cargo build -p sad-agent -p sad-coordinator --bins`)",
        path.display()
    );
    path
}

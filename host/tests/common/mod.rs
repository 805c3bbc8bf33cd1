//! Pieces the host's test files share (each file is its own crate: `mod common;`).
// Each test file is its own crate and uses a part of this.
#![allow(dead_code)]

use std::process::Child;

pub mod logged;

/// Whether a tool a test needs (`what`, found when `found`) is there: in CI (`CI` set) a
/// missing one fails the test, elsewhere the test is skipped, saying so.
pub fn required(found: bool, what: &str) -> bool {
    assert!(
        found || std::env::var_os("CI").is_none(),
        "CI: {what} must be installed (scripts/setup.sh installs it)"
    );
    if !found {
        eprintln!("skipped: {what} is not installed (scripts/setup.sh installs it)");
    }
    found
}

/// Whether `program ARG` runs.
pub fn runs(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// A child process killed when dropped, so a failing test never leaves a listener running.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

//! Finding the reference justbuild clients (scripts/install-reference-just).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The reference `just`, if installed. Without it the caller's test should
/// return early: outside CI that is a visible skip, under CI a failure.
pub fn reference_just() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("JSERVE_REFERENCE_JUST").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/justbuild-ref/bin/just")),
    ];
    let found = candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if found.is_none() {
        let msg = "reference `just` not found: run scripts/install-reference-just \
                   (or set JSERVE_REFERENCE_JUST to its `just`)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must have it");
        }
        // Straight to the stream, past the test harness's output capture, so it is seen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
    }
    found
}

/// The reference `just-mr` beside `just`.
pub fn reference_just_mr(just: &std::path::Path) -> PathBuf {
    just.with_file_name("just-mr")
}

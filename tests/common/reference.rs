//! Finding the reference justbuild clients (scripts/install-reference-just).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

/// The reference `just`, if installed. Without it the caller's test should
/// return early: outside CI that is a visible skip, under CI a failure.
pub fn reference_just() -> Option<PathBuf> {
    find_reference(
        "JSERVE_REFERENCE_JUST",
        ".cache/justbuild-ref/bin/just",
        "reference `just` not found: run scripts/install-reference-just \
         (or set JSERVE_REFERENCE_JUST to its `just`)",
    )
}

/// The reference `just` of the 1.6 generation (upstream REAPI split/splice
/// messages), if installed; missing, as for [`reference_just`].
pub fn reference_just_16() -> Option<PathBuf> {
    find_reference(
        "JSERVE_REFERENCE_JUST_16",
        ".cache/justbuild-ref-1.6/bin/just",
        "reference `just` 1.6 not found: run scripts/install-reference-just \
         ~/.cache/justbuild-ref-1.6 sid (or set JSERVE_REFERENCE_JUST_16 to its `just`)",
    )
}

/// The first of `$env` and `$HOME/default` that runs `just version`.
fn find_reference(env: &str, default: &str, missing: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os(env).map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(default)),
    ];
    let found = candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if found.is_none() {
        super::procs::skip(missing);
    }
    found
}

/// The reference `just-mr` beside `just`.
pub fn reference_just_mr(just: &std::path::Path) -> PathBuf {
    just.with_file_name("just-mr")
}

/// A running serve process (jserve or the reference), stopped on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program ARGS CONFIG` (jserve serve or the reference just serve) on
/// a fresh config over `repo`; waits for its info file.
pub fn start_server(
    program: &Path,
    args: &[&str],
    dir: &Path,
    repo: &Path,
    compatible: bool,
) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let info = dir.join("info.json");
    let mut config = json!({
        "local build root": {"root": "system", "path": dir.join("root").to_str().unwrap()},
        "repositories": [{"root": "system", "path": repo.to_str().unwrap()}],
        "remote service": {"info file": {"root": "system", "path": info.to_str().unwrap()}},
    });
    if compatible {
        config["execution endpoint"] = json!({"compatible": true});
    }
    let config_path = dir.join("serve.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let child = Command::new(program)
        .args(args)
        .arg(&config_path)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("server starts");
    let mut server = Server { child, port: 0 };
    server.port = super::procs::wait_for_info_port(&info, || {
        let status = server.child.try_wait().ok().flatten()?;
        Some(format!("{program:?} exited ({status})"))
    });
    server
}

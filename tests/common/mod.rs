//! Shared helpers: start jserve in-process on port 0 with a config of the test's choosing.

#![allow(dead_code)]

pub mod analysis;
pub mod clients;
pub mod corpus;
pub mod endpoints;
pub mod git;
pub mod http;
pub mod pki;
pub mod procs;
pub mod reapi;
pub mod reference;
pub mod targets;

use std::path::Path;
use std::time::Duration;

use jserve::config::{Environment, ServeConfig};
use jserve::context::ServeContext;
use jserve::daemon::RunningServer;
use serde_json::{json, Value};

/// `tar -czf ARCHIVE MEMBER` run in `dir`.
pub fn tar_gz(archive: &Path, dir: &Path, member: &str) {
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(archive)
        .arg(member)
        .current_dir(dir)
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar -czf {}", archive.display());
}

/// Location object for an absolute path.
pub fn loc(path: &Path) -> Value {
    json!({"root": "system", "path": path.to_str().unwrap()})
}

/// A config with a build root and info file inside `dir`, merged with `extra`.
pub fn config_in(dir: &Path, extra: Value) -> Value {
    let mut config = json!({
        "local build root": loc(&dir.join("build-root")),
        "remote service": {"port": 0, "info file": loc(&dir.join("info.json")),
                           "pid file": loc(&dir.join("jserve.pid"))},
    });
    let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) else {
        panic!("configs are objects")
    };
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(Value::Object(b)), Value::Object(e)) => b.extend(e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    config
}

pub async fn start(config: &Value) -> RunningServer {
    let env = Environment {
        home: None,
        cores: 2,
    };
    let mut config = ServeConfig::from_value(config, &env).expect("valid test config");
    // Archives are unpacked by the jserve binary, as the daemon does.
    config.unpack_helper = Some(env!("CARGO_BIN_EXE_jserve").into());
    let ctx = ServeContext::open(config).expect("build root opens");
    jserve::daemon::start(ctx).await.expect("daemon starts")
}

/// `jserve serve` in-process with `config` (test defaults for the rest):
/// its context, and a REAPI client of its own endpoint in `hash`'s mode.
pub async fn start_serve(
    config: &Value,
    hash: jserve::digest::HashFunction,
) -> (std::sync::Arc<ServeContext>, reapi::Endpoint) {
    let env = Environment {
        home: None,
        cores: 2,
    };
    let ctx = ServeContext::open(ServeConfig::from_value(config, &env).unwrap()).unwrap();
    let server = jserve::daemon::start(ctx.clone()).await.unwrap();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", server.addr.port()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let endpoint = reapi::Endpoint {
        server,
        hash,
        channel,
        dir: tempfile::tempdir().unwrap(),
    };
    (ctx, endpoint)
}

/// Reads the info file a daemon wrote: (interface, pid, port).
pub fn read_info(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("info file written");
    serde_json::from_str(&text).expect("info file is JSON")
}

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A plain-text channel to a daemon on this host.
pub async fn channel(port: u16) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(TIMEOUT)
        .connect()
        .await
        .expect("connects")
}

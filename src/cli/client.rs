//! Client commands for people and CI: ask any serve endpoint (jserve or
//! `just serve`) the SourceTree and Configuration questions. Exit code 0 only
//! when the answer is OK.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::Address;
use crate::proto::configuration_client::ConfigurationClient;
use crate::proto::source_tree_client::SourceTreeClient;
use crate::proto::*;

#[derive(Args, Debug)]
pub struct Endpoint {
    /// The serve endpoint, HOST:PORT.
    #[arg(short = 'R', long = "remote-serve-address", value_name = "HOST:PORT")]
    address: String,
    /// CA certificate to trust (turns TLS on).
    #[arg(long = "tls-ca-cert", value_name = "PATH")]
    ca_cert: Option<PathBuf>,
    /// Client certificate, for endpoints that ask for one.
    #[arg(long = "tls-client-cert", value_name = "PATH", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long = "tls-client-key", value_name = "PATH", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Print the answer as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Endpoint {
    /// The serve endpoint's address as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The TLS files, as the configuration's authentication would give them.
    pub fn auth(&self) -> crate::config::AuthConfig {
        crate::config::AuthConfig {
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArchiveKind {
    Tar,
    Zip,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Resolve {
    None,
    Ignore,
    Partial,
    Complete,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// The tree of a commit (optionally of a subdirectory of it).
    CommitTree {
        commit: String,
        #[arg(long, default_value = ".")]
        subdir: String,
        /// Also upload the tree to the endpoint's CAS.
        #[arg(long)]
        sync: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// The tree of an unpacked archive, given by its content (git blob id).
    ArchiveTree {
        content: String,
        #[arg(long = "type", value_enum, default_value = "tar")]
        kind: ArchiveKind,
        #[arg(long, default_value = ".")]
        subdir: String,
        #[arg(long, value_enum, default_value = "none")]
        resolve: Resolve,
        #[arg(long)]
        sync: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// The tree of a distribution directory: NAME=BLOB entries (BLOB:x for executables).
    DistdirTree {
        #[arg(required = true, value_name = "NAME=BLOB[:x]")]
        files: Vec<String>,
        #[arg(long)]
        sync: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Upload a known blob to the endpoint's CAS.
    Content {
        blob: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Upload a known tree to the endpoint's CAS.
    Tree {
        tree: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Which execution endpoint the serve endpoint works with, and in which mode.
    RemoteEndpoint {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// How a jserve daemon is doing: uptime, requests, cache hits, builds
    /// and actions running, build-root size (jserve's own Status service).
    Status {
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

pub(super) async fn connect(e: &Endpoint) -> anyhow::Result<Channel> {
    let address = Address::parse(&e.address).map_err(anyhow::Error::msg)?;
    let tls = e.ca_cert.is_some() || e.client_cert.is_some();
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(std::time::Duration::from_secs(20));
    if tls {
        let mut config = ClientTlsConfig::new().domain_name(address.host.clone());
        if let Some(ca) = &e.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&e.client_cert, &e.client_key) {
            config = config.identity(Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the serve endpoint {address}"))
}

/// Prints an answer and turns its status into the exit code.
fn report(json_output: bool, status: &str, ok: bool, fields: serde_json::Value) -> ExitCode {
    if json_output {
        let mut v = fields;
        v["status"] = json!(status);
        println!("{v}");
    } else {
        for (k, v) in fields.as_object().into_iter().flatten() {
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) if s.is_empty() => {}
                serde_json::Value::String(s) => println!("{k}: {s}"),
                other => println!("{k}: {other}"),
            }
        }
        println!("status: {status}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    }
}

fn digest_json(
    d: &Option<bazel_remote_apis::build::bazel::remote::execution::v2::Digest>,
) -> serde_json::Value {
    match d {
        Some(d) => json!(format!("{}:{}", d.hash, d.size_bytes)),
        None => serde_json::Value::Null,
    }
}

fn enum_name<E: std::fmt::Debug>(value: i32, parse: impl Fn(i32) -> Option<E>) -> String {
    match parse(value) {
        Some(e) => to_screaming(&format!("{e:?}")),
        None => format!("UNKNOWN({value})"),
    }
}

/// `NotFound` -> `NOT_FOUND`, as the protocol spells its enum values.
fn to_screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn status_json(s: &crate::proto::status::GetStatusResponse) -> serde_json::Value {
    json!({
        "version": s.version,
        "role": s.role,
        "uptime_seconds": s.uptime_seconds,
        "requests": s.requests,
        "serve_target_requests": s.serve_target_requests,
        "serve_target_hits": s.serve_target_hits,
        "builds_running": s.builds_running,
        "actions_running": s.actions_running,
        "actions_queued": s.actions_queued,
        "build_root_bytes": s.build_root_bytes,
        "build_root_measured_seconds_ago": s.build_root_measured_seconds_ago,
        "endpoint_reachable": s.endpoint_reachable,
    })
}

/// The status as a two-column table for people.
fn status_table(address: &str, s: &crate::proto::status::GetStatusResponse) -> String {
    let uptime = s.uptime_seconds as u64;
    let uptime = match uptime {
        0..60 => format!("{uptime} s"),
        60..3600 => format!("{} min {} s", uptime / 60, uptime % 60),
        _ => format!("{} h {} min", uptime / 3600, uptime % 3600 / 60),
    };
    let hits = if s.serve_target_requests == 0 {
        "no requests yet".to_string()
    } else {
        format!(
            "{} of {} requests ({:.1} %)",
            s.serve_target_hits,
            s.serve_target_requests,
            100.0 * s.serve_target_hits as f64 / s.serve_target_requests as f64
        )
    };
    let root = if s.build_root_measured_seconds_ago < 0.0 {
        "not measured yet".to_string()
    } else {
        format!(
            "{} (measured {:.0} s ago)",
            crate::storage::gc::usage::human(s.build_root_bytes),
            s.build_root_measured_seconds_ago
        )
    };
    let rows = [
        (
            "daemon",
            format!("jserve {} ({}) at {address}", s.version, s.role),
        ),
        ("uptime", uptime),
        ("requests", s.requests.to_string()),
        ("ServeTarget hits", hits),
        ("builds running", s.builds_running.to_string()),
        (
            "actions",
            format!("{} running, {} queued", s.actions_running, s.actions_queued),
        ),
        ("build root", root),
        (
            "endpoint",
            if s.endpoint_reachable {
                "reachable"
            } else {
                "NOT REACHABLE"
            }
            .to_string(),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn parse_distfile(spec: &str) -> anyhow::Result<serve_distdir_tree_request::Distfile> {
    let Some((name, blob)) = spec.split_once('=') else {
        bail!("distdir entry {spec:?} is not NAME=BLOB[:x]");
    };
    let (content, executable) = match blob.strip_suffix(":x") {
        Some(b) => (b, true),
        None => (blob, false),
    };
    Ok(serve_distdir_tree_request::Distfile {
        name: name.to_string(),
        content: content.to_string(),
        executable,
    })
}

async fn run_async(command: ClientCommand) -> anyhow::Result<ExitCode> {
    Ok(match command {
        ClientCommand::CommitTree {
            commit,
            subdir,
            sync,
            endpoint,
        } => {
            let mut c = SourceTreeClient::new(connect(&endpoint).await?);
            let r = c
                .serve_commit_tree(ServeCommitTreeRequest {
                    commit,
                    subdir,
                    sync_tree: sync,
                })
                .await?
                .into_inner();
            let status = enum_name(r.status, |v| {
                serve_commit_tree_response::ServeCommitTreeStatus::try_from(v).ok()
            });
            report(
                endpoint.json,
                &status,
                r.status == 0,
                json!({"tree": r.tree, "digest": digest_json(&r.digest)}),
            )
        }
        ClientCommand::ArchiveTree {
            content,
            kind,
            subdir,
            resolve,
            sync,
            endpoint,
        } => {
            use serve_archive_tree_request::{ArchiveType, SymlinksResolve};
            let mut c = SourceTreeClient::new(connect(&endpoint).await?);
            let r = c
                .serve_archive_tree(ServeArchiveTreeRequest {
                    content,
                    archive_type: match kind {
                        ArchiveKind::Tar => ArchiveType::Tar,
                        ArchiveKind::Zip => ArchiveType::Zip,
                    } as i32,
                    subdir,
                    resolve_symlinks: match resolve {
                        Resolve::None => SymlinksResolve::None,
                        Resolve::Ignore => SymlinksResolve::Ignore,
                        Resolve::Partial => SymlinksResolve::Partial,
                        Resolve::Complete => SymlinksResolve::Complete,
                    } as i32,
                    sync_tree: sync,
                })
                .await?
                .into_inner();
            let status = enum_name(r.status, |v| {
                serve_archive_tree_response::ServeArchiveTreeStatus::try_from(v).ok()
            });
            report(
                endpoint.json,
                &status,
                r.status == 0,
                json!({"tree": r.tree, "digest": digest_json(&r.digest)}),
            )
        }
        ClientCommand::DistdirTree {
            files,
            sync,
            endpoint,
        } => {
            let distfiles = files
                .iter()
                .map(|f| parse_distfile(f))
                .collect::<Result<Vec<_>, _>>()?;
            let mut c = SourceTreeClient::new(connect(&endpoint).await?);
            let r = c
                .serve_distdir_tree(ServeDistdirTreeRequest {
                    distfiles,
                    sync_tree: sync,
                })
                .await?
                .into_inner();
            let status = enum_name(r.status, |v| {
                serve_distdir_tree_response::ServeDistdirTreeStatus::try_from(v).ok()
            });
            report(
                endpoint.json,
                &status,
                r.status == 0,
                json!({"tree": r.tree, "digest": digest_json(&r.digest)}),
            )
        }
        ClientCommand::Content { blob, endpoint } => {
            let mut c = SourceTreeClient::new(connect(&endpoint).await?);
            let r = c
                .serve_content(ServeContentRequest { content: blob })
                .await?
                .into_inner();
            let status = enum_name(r.status, |v| {
                serve_content_response::ServeContentStatus::try_from(v).ok()
            });
            report(
                endpoint.json,
                &status,
                r.status == 0,
                json!({"digest": digest_json(&r.digest)}),
            )
        }
        ClientCommand::Tree { tree, endpoint } => {
            let mut c = SourceTreeClient::new(connect(&endpoint).await?);
            let r = c.serve_tree(ServeTreeRequest { tree }).await?.into_inner();
            let status = enum_name(r.status, |v| {
                serve_tree_response::ServeTreeStatus::try_from(v).ok()
            });
            report(
                endpoint.json,
                &status,
                r.status == 0,
                json!({"digest": digest_json(&r.digest)}),
            )
        }
        ClientCommand::RemoteEndpoint { endpoint } => {
            let mut c = ConfigurationClient::new(connect(&endpoint).await?);
            let r = c
                .remote_execution_endpoint(RemoteExecutionEndpointRequest {})
                .await?
                .into_inner();
            let compatible = c
                .compatibility(CompatibilityRequest {})
                .await?
                .into_inner()
                .compatible;
            // The address travels as a JSON string; show it plainly.
            let address = serde_json::from_str::<String>(&r.address).unwrap_or(r.address.clone());
            let address = if address.is_empty() {
                "(serve is its own endpoint)".to_string()
            } else {
                address
            };
            report(
                endpoint.json,
                "OK",
                true,
                json!({"address": address, "instance_name": r.remote_instance_name, "compatible": compatible}),
            )
        }
        ClientCommand::Status { endpoint } => {
            let mut c =
                crate::proto::status::status_client::StatusClient::new(connect(&endpoint).await?);
            let answer = c
                .get_status(crate::proto::status::GetStatusRequest {})
                .await;
            let s = match answer {
                Ok(r) => r.into_inner(),
                Err(e) if e.code() == tonic::Code::Unimplemented => bail!(
                    "{} has no jserve Status service (a `just serve`?)",
                    endpoint.address
                ),
                Err(e) => return Err(e.into()),
            };
            if endpoint.json {
                println!("{}", status_json(&s));
            } else {
                print!("{}", status_table(&endpoint.address, &s));
            }
            ExitCode::SUCCESS
        }
    })
}

pub fn run(command: ClientCommand) -> ExitCode {
    super::run_client("jserve", run_async(command))
}

//! Compiles the protos with protox (pure Rust: no system `protoc`): one
//! descriptor set of every service jserve serves, for gRPC reflection, and
//! Rust code for the serve protocol only. The REAPI, ByteStream and Operations
//! types and servers come from the `bazel-remote-apis` crate.

use prost::Message;
use std::path::PathBuf;

/// The files defining the services jserve serves; protox adds their imports.
const SERVED: &[&str] = &[
    "just_serve.proto",
    "jserve/status.proto",
    "build/bazel/remote/execution/v2/remote_execution.proto",
    "build/bazel/remote/asset/v1/remote_asset.proto",
    "google/bytestream/bytestream.proto",
    "google/longrunning/operations.proto",
];

/// Packages whose code is `bazel-remote-apis`'s, not generated here.
const EXTERN: &[(&str, &str)] = &[
    (".build.bazel", "::bazel_remote_apis::build::bazel"),
    (".google.api", "::bazel_remote_apis::google::api"),
    (
        ".google.bytestream",
        "::bazel_remote_apis::google::bytestream",
    ),
    (
        ".google.longrunning",
        "::bazel_remote_apis::google::longrunning",
    ),
    (".google.rpc", "::bazel_remote_apis::google::rpc"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(SERVED, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("services_descriptor.bin"), fds.encode_to_vec())?;

    // prost needs every message of the set, but the servers of the extern
    // packages would only be dead code: keep the serve protocol's alone.
    let mut serve_only = fds;
    for file in &mut serve_only.file {
        if !["just_serve.proto", "jserve/status.proto"].contains(&file.name()) {
            file.service.clear();
        }
    }
    let mut config = tonic_prost_build::configure().skip_protoc_run();
    for (proto, rust) in EXTERN {
        config = config.extern_path(*proto, *rust);
    }
    config.compile_fds(serve_only)?;
    Ok(())
}

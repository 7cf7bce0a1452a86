//! Compiles proto/just_serve.proto with protox (pure Rust: no system `protoc`).
//! The REAPI `Digest` it imports maps onto the `bazel-remote-apis` crate.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["just_serve.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by the reflection service.
    std::fs::write(
        out_dir.join("just_serve_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .extern_path(
            ".build.bazel.remote.execution.v2",
            "::bazel_remote_apis::build::bazel::remote::execution::v2",
        )
        .skip_protoc_run()
        .compile_fds(fds)?;
    Ok(())
}

//! jserve: a drop-in replacement for justbuild's `just serve`.

pub mod archive;
pub mod asset;
pub mod blocking;
pub mod build;
pub mod cli;
pub mod config;
pub mod connections;
pub mod context;
pub mod daemon;
pub mod digest;
pub mod execute;
mod gc_layer;
pub mod git;
mod health;
mod hold_layer;
pub mod logging;
pub mod memo;
pub mod metrics;
pub mod remote;
pub mod serve;
pub mod shared_cache;
pub mod sources;
pub mod status;
mod status_layer;
pub mod storage;
pub mod targets;
pub mod tree_walk;

/// Code generated from proto/just_serve.proto.
pub mod proto {
    tonic::include_proto!("justbuild.just_serve");

    /// Encoded descriptors of the serve protocol, the REAPI, ByteStream and
    /// Operations, with their imports: what gRPC reflection describes.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("services_descriptor");

    /// jserve's own status service (proto/jserve/status.proto).
    pub mod status {
        tonic::include_proto!("jserve.v1");
    }
}

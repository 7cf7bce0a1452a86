//! The REAPI gRPC services of jserve's own endpoint.

mod action_cache;
mod bytestream;
mod capabilities;
mod cas;
mod execution;

pub use action_cache::ActionCacheService;
pub use bytestream::ByteStreamService;
pub use capabilities::CapabilitiesService;
pub use cas::CasService;
pub use execution::{ExecutionService, OperationsService};

use super::endpoint::EndpointError;

/// Largest total of blob bytes in one batch call (what Capabilities announces),
/// leaving room below the 4 MiB gRPC message limit for the framing.
pub const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;

/// Runs blocking storage work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EndpointError> + Send + 'static,
) -> Result<T, tonic::Status> {
    Ok(crate::blocking::run(f).await?)
}

//! The three just-serve gRPC services: a thin layer from protocol messages to
//! jserve's domain code, choosing status codes.

mod configuration;
mod source_tree;
mod target;

pub use configuration::ConfigurationService;
pub use source_tree::SourceTreeService;
pub use target::TargetService;

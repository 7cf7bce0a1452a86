//! The three just-serve gRPC services, and the Remote Asset API's two: a
//! thin layer from protocol messages to jserve's domain code, choosing
//! status codes.

mod asset;
mod configuration;
mod source_tree;
mod target;

pub use asset::AssetService;
pub use configuration::ConfigurationService;
pub use source_tree::SourceTreeService;
pub use target::TargetService;

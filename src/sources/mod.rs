//! The SourceTree logic, independent of gRPC: mapping commits, archives,
//! distdirs, blobs and trees to git trees, and making them available in the
//! endpoint's CAS.

pub mod resolve;

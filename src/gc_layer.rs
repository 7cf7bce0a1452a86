//! Every RPC that reads or writes the build root holds justbuild's gc locks
//! shared (see `storage::gc`) until its response, streams included, is done.

use std::sync::Arc;

use crate::hold_layer::{HoldLayer, Holder};
use crate::storage::gc::{GcHold, GcLocks};

/// Services that touch no stored object: they never wait for a collection.
const EXEMPT: [&str; 6] = [
    "/grpc.health.",
    "/jserve.v1.Status/",
    "/grpc.reflection.",
    "/build.bazel.remote.execution.v2.Capabilities/",
    "/google.longrunning.Operations/",
    "/justbuild.just_serve.Configuration/",
];

/// The layer holding the gc locks.
pub fn layer(locks: Arc<GcLocks>) -> HoldLayer<GcHolder> {
    HoldLayer(GcHolder(locks))
}

#[derive(Clone)]
pub struct GcHolder(Arc<GcLocks>);

impl Holder for GcHolder {
    type Hold = GcHold;

    fn hold<B>(
        &self,
        request: &http::Request<B>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<GcHold>> + Send>> {
        let exempt = EXEMPT.iter().any(|p| request.uri().path().starts_with(p));
        let locks = self.0.clone();
        Box::pin(async move {
            if exempt {
                return None;
            }
            match locks.hold().await {
                Ok(hold) => Some(hold),
                Err(e) => {
                    tracing::warn!("cannot take the gc lock: {e}");
                    None
                }
            }
        })
    }
}

//! grpc.health.v1 that means something: while the associated external
//! endpoint does not answer, the serve services (and the server as a whole,
//! the empty name) are NOT_SERVING, since nothing they do would work; they
//! are SERVING again once it answers. The endpoint is probed in the
//! background at an interval, never per call.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::remote::RemoteCas;

/// Probes `remote` every `interval` and sets the status of `services` and
/// of the empty name from the answer; the returned task runs until aborted.
/// `reachable` follows the probes too.
pub fn watch_endpoint(
    reporter: HealthReporter,
    remote: Arc<dyn RemoteCas>,
    services: Vec<&'static str>,
    address: String,
    interval: Duration,
    reachable: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut serving = true;
        loop {
            let probed = remote.probe().await;
            let now = probed.is_ok();
            reachable.store(now, std::sync::atomic::Ordering::Relaxed);
            if now != serving {
                match &probed {
                    Err(e) => tracing::warn!(
                        "the execution endpoint {address} does not answer ({e}): serve services NOT_SERVING"
                    ),
                    Ok(()) => tracing::info!(
                        "the execution endpoint {address} answers again: serve services SERVING"
                    ),
                }
                let status = if now {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in std::iter::once("").chain(services.iter().copied()) {
                    reporter.set_service_status(name, status).await;
                }
                serving = now;
            }
            tokio::time::sleep(interval).await;
        }
    })
}

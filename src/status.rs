//! jserve's own Status service (proto/jserve/status.proto): a snapshot of
//! the daemon's counters for `jserve status`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};

use crate::metrics::Scrape;
use crate::proto::status::status_server::Status as StatusApi;
use crate::proto::status::{GetStatusRequest, GetStatusResponse};

/// A measurement of the build root younger than this is answered as it is.
const MEASURED_WITHIN: Duration = Duration::from_secs(60);

pub struct StatusService {
    pub role: &'static str,
    pub scrape: Scrape,
    /// Whether the external endpoint answered its last probe.
    pub reachable: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl StatusApi for StatusService {
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let g = crate::metrics::global();
        self.scrape.measure_unless_younger(MEASURED_WITHIN).await;
        let (root_bytes, measured_ago) = self
            .scrape
            .last_usage()
            .map_or((0, -1.0), |(bytes, ago)| (bytes, ago.as_secs_f64()));
        let target = self.scrape.target.as_ref();
        let load = |f: fn(&crate::targets::TargetStats) -> &std::sync::atomic::AtomicU64| {
            target.map_or(0, |t| f(t).load(Ordering::Relaxed))
        };
        Ok(Response::new(GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: SystemTime::now()
                .duration_since(g.started())
                .unwrap_or_default()
                .as_secs_f64(),
            role: self.role.to_string(),
            requests: g.requests_answered.load(Ordering::Relaxed),
            serve_target_requests: load(|t| &t.requests),
            serve_target_hits: load(|t| &t.hits),
            builds_running: load(|t| &t.builds_running),
            actions_running: g.actions_running.get().max(0) as u64,
            actions_queued: g.actions_queued.get().max(0) as u64,
            build_root_bytes: root_bytes,
            build_root_measured_seconds_ago: measured_ago,
            endpoint_reachable: self.reachable.load(Ordering::Relaxed),
        }))
    }
}

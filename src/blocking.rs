//! Blocking git and file work runs off the async workers, on tokio's
//! blocking pool, through here; each error type says how a lost worker (a
//! panic, or shutdown) reads to its callers.

/// A blocking task that ended without a result.
#[derive(Clone, Debug, thiserror::Error)]
#[error("worker task failed: {0}")]
pub struct WorkerFailed(String);

/// Runs `f` on the blocking pool.
pub async fn run<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<WorkerFailed> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(WorkerFailed(e.to_string())))?
}

/// Runs `f`, which cannot fail, on the blocking pool.
pub async fn value<T, E>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<WorkerFailed>,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(WorkerFailed(e.to_string())))
}

impl From<WorkerFailed> for String {
    fn from(e: WorkerFailed) -> String {
        e.to_string()
    }
}

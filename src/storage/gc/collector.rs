//! Keeping the build root within a size bound, by generations: a rotation
//! drops generation 1 and makes generation 0 the new generation 1, and every
//! read copies what it uses forward into generation 0 (with what it needs:
//! a tree's parts, an entry's outputs). What was used since the last
//! rotation survives the next one; what was not is dropped after two. Each
//! generation is complete on its own, so dropping one never leaves an entry
//! without its objects, and a rotation is a few renames, safe at any crash.
//!
//! The daemon measures the root at every interval, in the background, and
//! rotates when the stores pass the bound, or when generation 0 alone
//! passes half of it (then one rotation keeps the stores at or below the
//! bound without dropping anything used recently). A rotation waits until
//! no request is under way, as `just gc` does; see the gate in `super`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::usage::{human, measure, Part, Usage};
use super::{Exclusive, GcLocks};
use crate::config::GcConfig;
use crate::storage::BuildRoot;
use crate::storage::GENERATIONS;

/// After a collection the stores are at most this share of the bound
/// (rotating twice if generation 0 alone was larger).
const LOW_WATER: f64 = 0.8;

/// How long new requests may wait at the gate while a rotation waits for
/// those under way; longer, and the rotation is tried again later.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Why the stores are rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The stores passed the bound.
    OverBound,
    /// Generation 0 alone passed half the bound.
    YoungGenerationFull,
    /// Asked for (`jserve gc --rotate`).
    Asked,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::OverBound => "the stores passed the bound",
            Reason::YoungGenerationFull => "generation 0 passed half the bound",
            Reason::Asked => "asked for",
        })
    }
}

/// How many rotations `usage` calls for under `max_bytes`: none, one, or
/// two (when generation 0 alone is above the low-water mark, one rotation
/// would not bring the stores down to it).
pub fn rotations_needed(usage: &Usage, max_bytes: u64) -> (usize, Option<Reason>) {
    let stores = usage.stores().bytes;
    let young = usage.generations[0].bytes;
    if stores > max_bytes {
        let low_water = (max_bytes as f64 * LOW_WATER) as u64;
        let rotations = if young > low_water { 2 } else { 1 };
        (rotations, Some(Reason::OverBound))
    } else if young > max_bytes / 2 {
        (1, Some(Reason::YoungGenerationFull))
    } else {
        (0, None)
    }
}

/// What one collection did.
#[derive(Clone, Debug)]
pub struct Collection {
    pub reason: Reason,
    pub rotations: usize,
    pub before: Usage,
    pub after: Usage,
    /// Files and bytes in the dropped generations, as measured before.
    pub removed: Part,
    pub elapsed: Duration,
}

impl std::fmt::Display for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rotation(s) ({}): removed {} files, {}; stores {} -> {} in {} ms",
            self.rotations,
            self.reason,
            self.removed.files,
            human(self.removed.bytes),
            human(self.before.stores().bytes),
            human(self.after.stores().bytes),
            self.elapsed.as_millis()
        )
    }
}

/// Whether a rotation now would drop what was used less than `min_age`
/// ago: the last rotation was more recent than that.
pub fn too_soon(root: &BuildRoot, min_age: Duration) -> Option<Duration> {
    root.since_rotation().filter(|age| *age < min_age)
}

/// How a collection goes: how many rotations at most, what was used how
/// recently stays, and how many threads delete what was dropped (one in
/// the daemon, which serves meanwhile; all cores from the command line).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rotations: usize,
    pub min_age: Duration,
    pub delete_threads: usize,
}

/// Rotates up to `plan.rotations` times while `exclusive` is held (each
/// only if the last rotation is at least `plan.min_age` ago), then releases
/// it and deletes what was dropped; blocking.
pub fn rotate_and_delete(
    root: &BuildRoot,
    exclusive: Exclusive,
    plan: Plan,
    reason: Reason,
    before: Usage,
    started: Instant,
) -> io::Result<Collection> {
    let Plan {
        rotations,
        min_age,
        delete_threads,
    } = plan;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // In this process's staging directory: a crash before the deletion
    // ends leaves it to the next process's sweep.
    let trash = root
        .tmp_dir()
        .join(format!("gc-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut rotated = 0;
    let outcome = (0..rotations).try_for_each(|i| {
        if too_soon(root, min_age).is_some() {
            return Ok(());
        }
        root.rotate_generations(&trash.join(i.to_string()))?;
        rotated += 1;
        Ok::<_, io::Error>(())
    });
    drop(exclusive);
    crate::storage::remove_tree_on(&trash, delete_threads);
    outcome?;
    let (after, removed) = shifted(&before, rotated);
    Ok(Collection {
        reason,
        rotations: rotated,
        before,
        after,
        removed,
        elapsed: started.elapsed(),
    })
}

/// The usage after `rotations` rotations of a root measured as `before`,
/// and what they dropped, without walking it again (what a crowded disk
/// would take seconds for); blocks shared by hard links with what was kept
/// count as dropped, and the next measurement corrects that.
fn shifted(before: &Usage, rotations: usize) -> (Usage, Part) {
    let mut after = before.clone();
    let mut removed = Part::default();
    for _ in 0..rotations {
        removed += after.generations[GENERATIONS - 1];
        after.generations.rotate_right(1);
        after.generations[0] = Part::default();
    }
    (after, removed)
}

/// One collection in the daemon: measure, and rotate if the bound asks for
/// it once the requests under way are done. `Ok(None)` if nothing was due
/// or the requests did not finish within the pause.
pub async fn collect_once(
    locks: &GcLocks,
    root: &BuildRoot,
    config: &GcConfig,
) -> io::Result<(Usage, Option<Collection>)> {
    let started = Instant::now();
    let (measured, since_rotation) = {
        let (root, min_age) = (root.clone(), config.min_age);
        tokio::task::spawn_blocking(move || (measure(&root), too_soon(&root, min_age)))
            .await
            .map_err(io::Error::other)?
    };
    let (rotations, Some(reason)) = rotations_needed(&measured, config.max_bytes) else {
        return Ok((measured, None));
    };
    if let Some(age) = since_rotation {
        tracing::info!(
            "gc: {reason}, but the last rotation was only {} s ago (\"min age seconds\": {}); \
             waiting",
            age.as_secs(),
            config.min_age.as_secs_f64()
        );
        return Ok((measured, None));
    }
    // A build running longer than the pause would only make new requests
    // wait for nothing.
    if let Some(age) = locks.oldest_hold().filter(|age| *age >= MAX_PAUSE) {
        tracing::info!(
            "gc: {reason}, but a request has been running for {} s; trying again later",
            age.as_secs()
        );
        return Ok((measured, None));
    }
    let Some(exclusive) = locks.exclusive(MAX_PAUSE).await? else {
        tracing::info!(
            "gc: {reason}, but requests were still under way after {} s; trying again later",
            MAX_PAUSE.as_secs()
        );
        return Ok((measured, None));
    };
    let root = root.clone();
    let before = measured.clone();
    let plan = Plan {
        rotations,
        min_age: config.min_age,
        delete_threads: 1,
    };
    let collection = tokio::task::spawn_blocking(move || {
        rotate_and_delete(&root, exclusive, plan, reason, before, started)
    })
    .await
    .map_err(io::Error::other)??;
    Ok((measured, (collection.rotations > 0).then_some(collection)))
}

/// Counters of the daemon's collections, for logs and metrics.
#[derive(Debug, Default)]
pub struct GcStats {
    pub collections: AtomicU64,
    pub rotations: AtomicU64,
    pub files_removed: AtomicU64,
    pub bytes_removed: AtomicU64,
    /// The stores' size at the last measurement.
    pub stores_bytes: AtomicU64,
}

/// The daemon's collector: measures right away (logging the root's size
/// and bound) and then every interval, collecting as needed, until the
/// returned task is aborted.
pub fn spawn(
    locks: Arc<GcLocks>,
    root: BuildRoot,
    config: GcConfig,
    stats: Arc<GcStats>,
) -> tokio::task::JoinHandle<()> {
    tracing::info!(
        "keeping the stores of {} below {}, measured every {} s in the background",
        root.path().display(),
        human(config.max_bytes),
        config.interval.as_secs_f64()
    );
    tokio::spawn(async move {
        let mut first = true;
        loop {
            match collect_once(&locks, &root, &config).await {
                Ok((usage, collection)) => {
                    stats
                        .stores_bytes
                        .store(usage.stores().bytes, Ordering::Relaxed);
                    if first {
                        tracing::info!(
                            "build root {}: stores {} in {} files, staging {}; bound {}",
                            root.path().display(),
                            human(usage.stores().bytes),
                            usage.stores().files,
                            human(usage.staging.bytes),
                            human(config.max_bytes)
                        );
                    }
                    if let Some(c) = collection {
                        tracing::info!("gc: {c}");
                        stats.collections.fetch_add(1, Ordering::Relaxed);
                        stats
                            .rotations
                            .fetch_add(c.rotations as u64, Ordering::Relaxed);
                        stats
                            .files_removed
                            .fetch_add(c.removed.files, Ordering::Relaxed);
                        stats
                            .bytes_removed
                            .fetch_add(c.removed.bytes, Ordering::Relaxed);
                        stats
                            .stores_bytes
                            .store(c.after.stores().bytes, Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::warn!("gc: {e}"),
            }
            first = false;
            tokio::time::sleep(config.interval).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(young: u64, old: u64) -> Usage {
        let mut u = Usage::default();
        u.generations[0].bytes = young;
        u.generations[1].bytes = old;
        u
    }

    #[test]
    fn rotations_follow_the_bound() {
        assert_eq!(rotations_needed(&usage(10, 80), 100), (0, None));
        assert_eq!(
            rotations_needed(&usage(51, 0), 100),
            (1, Some(Reason::YoungGenerationFull))
        );
        assert_eq!(
            rotations_needed(&usage(30, 71), 100),
            (1, Some(Reason::OverBound))
        );
        // One rotation would leave generation 0's 90 as generation 1.
        assert_eq!(
            rotations_needed(&usage(90, 20), 100),
            (2, Some(Reason::OverBound))
        );
    }

    #[test]
    fn rotations_shift_the_measured_usage() {
        let (after, removed) = shifted(&usage(30, 70), 1);
        assert_eq!(removed.bytes, 70);
        assert_eq!(
            (after.generations[0].bytes, after.generations[1].bytes),
            (0, 30)
        );
        let (after, removed) = shifted(&usage(30, 70), 2);
        assert_eq!((removed.bytes, after.stores().bytes), (100, 0));
    }
}

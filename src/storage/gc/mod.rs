//! Garbage collection by generations, beside justbuild's. `just gc`,
//! `just-mr gc-repo` and jserve's own collector (collector.rs) rotate
//! generations under an exclusive `flock` on a `gc.lock` file; whoever uses
//! generation 0 holds the same lock shared, so a rotation waits until no
//! request is under way. jserve holds each lock once per process while any
//! request needs it (a count of holders), and notices a rotation when it
//! takes the lock anew and generation 0 has another marker (see
//! `BuildRoot::generation_identity`): then what it remembers in memory is
//! forgotten.
//!
//! While jserve's own collector waits for the requests under way, new ones
//! wait at a gate (briefly: the collector gives up after a bounded pause),
//! so that a busy daemon cannot starve it.

pub mod check;
pub mod collector;
pub mod usage;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BuildRoot;

/// `flock(2)` on `file`, waiting (unless `LOCK_NB` is in `op`); retried on EINTR.
pub(crate) fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: the descriptor is open for as long as `file` lives.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Identity of a generation-0 directory (its marker), if it has one.
type Identity = Option<String>;

/// How long a shared lock stays taken after its last holder left: a busy
/// daemon's requests come and go all the time, and taking the lock anew
/// for each (open, flock, close on the blocking pool) would cost more than
/// the request. A collection waits at most this much longer.
const LINGER: Duration = Duration::from_millis(100);

/// One lock file, held shared while its count of holders is not zero (and
/// for [`LINGER`] after).
struct SharedFlock {
    path: PathBuf,
    state: Mutex<FlockState>,
    /// Serialises taking the lock for the first holder (which may wait).
    first: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct FlockState {
    holders: usize,
    /// Open (and locked) while held or lingering.
    file: Option<File>,
    /// Counts the times the holders went to none: a lingering release
    /// happens only if no other hold came and went meanwhile.
    idle: u64,
}

/// A holder of a [`SharedFlock`]; the lock is released after the last one.
struct Held(Arc<SharedFlock>);

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("flock state");
        state.holders -= 1;
        if state.holders > 0 {
            return;
        }
        state.idle += 1;
        let idle = state.idle;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let flock = self.0.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    flock.release_if_idle(Some(idle));
                });
            }
            // Closing the file releases the lock.
            Err(_) => state.file = None,
        }
    }
}

impl SharedFlock {
    fn new(path: PathBuf) -> Arc<SharedFlock> {
        Arc::new(SharedFlock {
            path,
            state: Mutex::default(),
            first: tokio::sync::Mutex::new(()),
        })
    }

    /// Joins the holders, or takes over the lingering lock (no wait).
    fn join(self: &Arc<Self>) -> Option<Held> {
        let mut state = self.state.lock().expect("flock state");
        (state.holders > 0 || state.file.is_some()).then(|| {
            state.holders += 1;
            Held(self.clone())
        })
    }

    /// Releases a lingering lock nobody holds; with `idle`, only if no
    /// hold came and went since that idle period began.
    fn release_if_idle(&self, idle: Option<u64>) {
        let mut state = self.state.lock().expect("flock state");
        if state.holders == 0 && idle.is_none_or(|i| i == state.idle) {
            state.file = None;
        }
    }

    /// A hold; true with it if the lock was taken anew (a rotation may have
    /// happened since it was last held).
    async fn hold(self: &Arc<Self>) -> io::Result<(Held, bool)> {
        if let Some(held) = self.join() {
            return Ok((held, false));
        }
        let _first = self.first.lock().await;
        if let Some(held) = self.join() {
            return Ok((held, false));
        }
        let path = self.path.clone();
        // Blocks while a collection runs; off the async workers.
        let file = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let file = open_lock(&path)?;
            flock(&file, libc::LOCK_SH)?;
            Ok(file)
        })
        .await
        .map_err(io::Error::other)??;
        let mut state = self.state.lock().expect("flock state");
        state.holders = 1;
        state.file = Some(file);
        Ok((Held(self.clone()), true))
    }
}

/// What a request holds so that no rotation happens under it; clone it
/// into work that outlives the request.
#[derive(Clone)]
pub struct GcHold {
    _held: Arc<(Held, Held)>,
    _since: Arc<Since>,
}

/// When the holds under way began, so that a collection can tell a long
/// build from a moment's work and not pause requests for nothing.
#[derive(Default)]
struct HoldTimes {
    next: AtomicU64,
    started: Mutex<std::collections::HashMap<u64, Instant>>,
}

/// One hold's entry in [`HoldTimes`], removed with it.
struct Since(Arc<HoldTimes>, u64);

impl Drop for Since {
    fn drop(&mut self) {
        self.0.started.lock().expect("hold times").remove(&self.1);
    }
}

impl HoldTimes {
    fn enter(self: &Arc<Self>) -> Arc<Since> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.started
            .lock()
            .expect("hold times")
            .insert(id, Instant::now());
        Arc::new(Since(self.clone(), id))
    }

    fn oldest(&self) -> Option<Duration> {
        let started = self.started.lock().expect("hold times");
        started.values().map(Instant::elapsed).max()
    }
}

/// The rotations of one build root seen so far.
struct RotationWatch {
    root: BuildRoot,
    /// Identity of each generation 0 as last seen (storage, repositories).
    seen: Mutex<(Identity, Identity)>,
    count: AtomicU64,
}

/// The two locks of one build root, and the rotations seen.
pub struct GcLocks {
    root: BuildRoot,
    storage: Arc<SharedFlock>,
    repositories: Arc<SharedFlock>,
    watch: Arc<RotationWatch>,
    held: Mutex<Option<std::sync::Weak<(Held, Held)>>>,
    /// Closed (taken for writing) while this process's collector waits for
    /// the requests under way to finish.
    gate: Arc<tokio::sync::RwLock<()>>,
    times: Arc<HoldTimes>,
}

/// Both gc locks held exclusively: no request of any process that follows
/// the protocol uses the build root meanwhile. Dropping it releases them.
pub struct Exclusive {
    _files: (File, File),
    _gate: Option<tokio::sync::OwnedRwLockWriteGuard<()>>,
}

/// Opens a lock file, creating it (and its directory) if needed.
fn open_lock(path: &std::path::Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Both locks of `root` with `op` (repositories first, the order every
/// holder uses); `None` when `op` has `LOCK_NB` and one is taken.
fn lock_both(root: &BuildRoot, op: libc::c_int) -> io::Result<Option<(File, File)>> {
    let mut files = Vec::with_capacity(2);
    for path in [root.repository_gc_lock_path(), root.gc_lock_path()] {
        let file = open_lock(&path)?;
        match flock(&file, op) {
            Ok(()) => files.push(file),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let storage = files.pop().expect("two locks");
    let repositories = files.pop().expect("two locks");
    Ok(Some((repositories, storage)))
}

/// Takes both locks of `root` exclusively, waiting as long as it takes.
pub fn exclusive_blocking(root: &BuildRoot) -> io::Result<Exclusive> {
    let files = lock_both(root, libc::LOCK_EX)?.expect("a waiting lock is taken");
    Ok(Exclusive {
        _files: files,
        _gate: None,
    })
}

/// Both locks shared, as a request holds them (for a process that only
/// reads the root: `jserve gc --check`).
pub fn shared_blocking(root: &BuildRoot) -> io::Result<(File, File)> {
    Ok(lock_both(root, libc::LOCK_SH)?.expect("a waiting lock is taken"))
}

impl GcLocks {
    /// The locks of `root`, one instance per build root and process, so
    /// that all parts of a daemon count their holds together.
    pub fn for_root(root: &BuildRoot) -> Arc<GcLocks> {
        static KNOWN: Mutex<Vec<(PathBuf, std::sync::Weak<GcLocks>)>> = Mutex::new(Vec::new());
        let mut known = KNOWN.lock().expect("gc locks registry");
        known.retain(|(_, w)| w.strong_count() > 0);
        if let Some(locks) = known
            .iter()
            .find(|(p, _)| p == root.path())
            .and_then(|(_, w)| w.upgrade())
        {
            return locks;
        }
        let locks = GcLocks::new(root);
        known.push((root.path().to_path_buf(), Arc::downgrade(&locks)));
        locks
    }

    fn new(root: &BuildRoot) -> Arc<GcLocks> {
        Arc::new(GcLocks {
            storage: SharedFlock::new(root.gc_lock_path()),
            repositories: SharedFlock::new(root.repository_gc_lock_path()),
            watch: Arc::new(RotationWatch {
                root: root.clone(),
                seen: Mutex::new((
                    root.generation_identity(false),
                    root.generation_identity(true),
                )),
                count: AtomicU64::new(0),
            }),
            held: Mutex::new(None),
            gate: Arc::default(),
            times: Arc::default(),
            root: root.clone(),
        })
    }

    /// Holds both locks (repositories first, as justbuild's serve does);
    /// waits while this process's collector waits for a rotation.
    pub async fn hold(&self) -> io::Result<GcHold> {
        let _pass = self.gate.read().await;
        self.hold_past_gate().await
    }

    /// A hold for work that a request holding one starts and that may
    /// outlive it (a build, an action): joins the current holders without
    /// waiting at the gate, which would wait for that very request.
    pub async fn extend(&self) -> io::Result<GcHold> {
        match self.current() {
            Some(held) => Ok(GcHold {
                _held: held,
                _since: self.times.enter(),
            }),
            None => self.hold().await,
        }
    }

    fn current(&self) -> Option<Arc<(Held, Held)>> {
        self.held
            .lock()
            .expect("held")
            .as_ref()
            .and_then(|w| w.upgrade())
    }

    async fn hold_past_gate(&self) -> io::Result<GcHold> {
        if let Some(held) = self.current() {
            return Ok(GcHold {
                _held: held,
                _since: self.times.enter(),
            });
        }
        let (repos, repos_anew) = self.repositories.hold().await?;
        let (storage, storage_anew) = self.storage.hold().await?;
        if repos_anew || storage_anew {
            let watch = self.watch.clone();
            tokio::task::spawn_blocking(move || watch.check())
                .await
                .map_err(io::Error::other)?;
        }
        let held = Arc::new((repos, storage));
        *self.held.lock().expect("held") = Some(Arc::downgrade(&held));
        Ok(GcHold {
            _held: held,
            _since: self.times.enter(),
        })
    }

    /// How long the longest-running hold of this process has lasted.
    pub fn oldest_hold(&self) -> Option<Duration> {
        self.times.oldest()
    }

    /// Both locks exclusively for this process's collector: closes the gate
    /// to new requests, then waits for those under way, at most `pause`
    /// (`None` then: the gate opens again and the rotation waits for a
    /// quieter moment).
    pub async fn exclusive(&self, pause: Duration) -> io::Result<Option<Exclusive>> {
        let gate = self.gate.clone().write_owned().await;
        let deadline = Instant::now() + pause;
        loop {
            // Nobody can join a lingering lock behind the closed gate.
            self.repositories.release_if_idle(None);
            self.storage.release_if_idle(None);
            let root = self.root.clone();
            let taken = tokio::task::spawn_blocking(move || {
                lock_both(&root, libc::LOCK_EX | libc::LOCK_NB)
            })
            .await
            .map_err(io::Error::other)??;
            if let Some(files) = taken {
                return Ok(Some(Exclusive {
                    _files: files,
                    _gate: Some(gate),
                }));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // Requests under way release the locks when they end; no event
            // says so across processes, so look again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many rotations were noticed; memory keyed to generation 0 is
    /// stale once this changes.
    pub fn rotations(&self) -> u64 {
        self.watch.count.load(Ordering::SeqCst)
    }
}

impl RotationWatch {
    /// Compares the generation markers with those seen last (file work:
    /// on the blocking pool).
    fn check(&self) {
        let mut seen = self.seen.lock().expect("seen");
        let storage = self.root.generation_identity(false);
        let repositories = self.root.generation_identity(true);
        let mut rotated = false;
        if storage != seen.0 {
            tracing::info!("the CAS and caches were rotated (a collection or just gc)");
            rotated = true;
        }
        if repositories != seen.1 {
            tracing::info!("the repositories were rotated (a collection or just-mr gc-repo)");
            // The git cache is new (or missing); every thread reopens it.
            if let Err(e) = self.root.init_git_cache() {
                tracing::warn!("cannot create the git cache anew: {e}");
            }
            crate::git::reopen_repositories();
            rotated = true;
        }
        if rotated {
            self.root.create_generation_dirs();
            *seen = (
                self.root.generation_identity(false),
                self.root.generation_identity(true),
            );
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a collector could take the lock at `path` now.
    fn collector_could_lock(path: &std::path::Path) -> bool {
        let file = File::open(path).unwrap();
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn holds_keep_collectors_out_and_rotations_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let locks = GcLocks::for_root(&root);
        assert!(Arc::ptr_eq(&locks, &GcLocks::for_root(&root)));
        let first = locks.hold().await.unwrap();
        let second = locks.hold().await.unwrap();
        for path in [root.gc_lock_path(), root.repository_gc_lock_path()] {
            assert!(!collector_could_lock(&path));
        }
        drop(first);
        assert!(
            !collector_could_lock(&root.gc_lock_path()),
            "one holder left"
        );
        drop(second);
        // Released once the linger is over.
        for path in [root.gc_lock_path(), root.repository_gc_lock_path()] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !collector_could_lock(&path) {
                assert!(Instant::now() < deadline, "{path:?} still locked");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(locks.rotations(), 0);

        // What `just gc` does while nobody holds the lock.
        let gen = dir.path().join("protocol-dependent");
        std::fs::rename(gen.join("generation-0"), gen.join("generation-1")).unwrap();
        let _hold = locks.hold().await.unwrap();
        assert_eq!(locks.rotations(), 1);
        assert!(gen.join("generation-0").is_dir());
    }

    #[tokio::test]
    async fn the_collector_waits_for_requests_behind_a_gate_and_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let locks = GcLocks::for_root(&root);
        assert!(locks.oldest_hold().is_none());
        let request = locks.hold().await.unwrap();
        assert!(locks.oldest_hold().is_some());

        // A request under way outlasts the pause: no exclusive locks.
        let pause = Duration::from_millis(100);
        assert!(locks.exclusive(pause).await.unwrap().is_none());

        // While the collector waits, a new request waits at the gate, but
        // work the running request starts (extend) does not.
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.exclusive(Duration::from_secs(30)).await })
        };
        while locks.gate.try_write().is_ok() {
            tokio::task::yield_now().await;
        }
        let extended = locks.extend().await.unwrap();
        let newcomer = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.hold().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert!(!newcomer.is_finished(), "a new request passed the gate");
        drop(extended);
        drop(request);
        let exclusive = waiting.await.unwrap().unwrap().expect("locks once idle");
        for path in [root.gc_lock_path(), root.repository_gc_lock_path()] {
            assert!(!collector_could_lock(&path), "taken exclusively");
        }
        assert!(!newcomer.is_finished());
        drop(exclusive);
        newcomer.await.unwrap().unwrap();
        assert!(locks.oldest_hold().is_none(), "every hold is gone");
    }

    #[test]
    fn rotations_are_noticed_even_when_an_inode_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let before = root.generation_identity(false);
        assert!(before.is_some());
        let trash = root.tmp_dir().join("t");
        root.rotate_generations(&trash.join("1")).unwrap();
        root.rotate_generations(&trash.join("2")).unwrap();
        assert_ne!(root.generation_identity(false), before);
        assert_ne!(root.generation_identity(true), before);
        // The new generation 0 has its git cache already.
        assert!(git2::Repository::open_bare(root.git_cache_dir()).is_ok());
    }
}

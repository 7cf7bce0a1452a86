//! Staging space: `ROOT/tmp/<process>/`, one directory per process that
//! uses the build root, held by an exclusive `flock` on its `.lock` for as
//! long as the process runs.
//!
//! Everything staged (atomic writes, unpacked archives, partial uploads)
//! lives there. A process killed mid-way leaves its directory behind with
//! the lock released; the next process to open the build root sweeps such
//! directories away in the background, never those of a live process.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use super::gc::flock;

const LOCK_FILE: &str = ".lock";

/// Entries of the older flat layout (files and directories straight in
/// `ROOT/tmp`) are removed once untouched for this long.
const FLAT_ENTRY_AGE: Duration = Duration::from_secs(3600);

/// This process's staging directory of one build root; the lock is released
/// when the last user drops it.
#[derive(Debug)]
pub struct Lease {
    dir: PathBuf,
    _lock: File,
}

impl Lease {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The lease of this process for the staging area `tmp` (`ROOT/tmp`): the
/// same one for every opening of the build root, so that one process has
/// one directory. The first lease sweeps what dead processes left.
pub fn lease(tmp: &Path) -> io::Result<Arc<Lease>> {
    static LEASES: Mutex<Option<HashMap<PathBuf, Weak<Lease>>>> = Mutex::new(None);
    let mut leases = LEASES.lock().expect("staging leases");
    let leases = leases.get_or_insert_with(HashMap::new);
    if let Some(lease) = leases.get(tmp).and_then(Weak::upgrade) {
        return Ok(lease);
    }
    std::fs::create_dir_all(tmp)?;
    let dir = fresh_dir(tmp)?;
    let lock = File::create(dir.join(LOCK_FILE))?;
    flock(&lock, libc::LOCK_EX | libc::LOCK_NB)?;
    let lease = Arc::new(Lease { dir, _lock: lock });
    leases.insert(tmp.to_path_buf(), Arc::downgrade(&lease));
    let (tmp, own) = (tmp.to_path_buf(), lease.dir.clone());
    std::thread::Builder::new()
        .name("staging-sweep".into())
        .spawn(move || {
            let swept = sweep(&tmp, &own);
            if swept > 0 {
                tracing::info!(
                    "removed {swept} staging entries that stopped processes left in {}",
                    tmp.display()
                );
            }
        })?;
    Ok(lease)
}

/// A new directory `tmp/<pid>-<n>`.
fn fresh_dir(tmp: &Path) -> io::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for n in 0u32.. {
        let dir = tmp.join(format!("{}-{nanos}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("some name is free")
}

/// A fresh directory `<prefix>-<pid>-<n>` below `parent` (a staging
/// directory) for one piece of work, removed with its content when dropped.
pub fn scratch_dir(parent: &Path, prefix: &str) -> io::Result<ScratchDir> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(parent)?;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{prefix}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(ScratchDir(path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// See [`scratch_dir`].
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        super::remove_tree(&self.0);
    }
}

/// Removes from `tmp` the directories of processes that are gone (their
/// lock is free) and flat entries untouched for an hour; `own` is kept.
/// Returns how many entries went.
pub fn sweep(tmp: &Path, own: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path == own {
            continue;
        }
        let stale = match File::open(path.join(LOCK_FILE)) {
            // Taking the lock means its process is gone; it is dropped again
            // with the file once the directory is removed.
            Ok(lock) => flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_ok(),
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > FLAT_ENTRY_AGE),
        };
        if !stale {
            continue;
        }
        if path.is_dir() {
            super::remove_tree(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
        swept += 1;
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_processes_leftovers_go_and_live_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("tmp");
        // A process that died: its directory with a lock nobody holds.
        let dead = tmp.join("4242-dead");
        std::fs::create_dir_all(dead.join("unpack/sub")).unwrap();
        std::fs::write(dead.join("unpack/sub/big"), vec![0u8; 4096]).unwrap();
        File::create(dead.join(LOCK_FILE)).unwrap();
        // A live process: its lock is held (here, by this test).
        let live = tmp.join("4343-live");
        std::fs::create_dir_all(&live).unwrap();
        let held = File::create(live.join(LOCK_FILE)).unwrap();
        flock(&held, libc::LOCK_EX).unwrap();
        std::fs::write(live.join("upload"), b"partial").unwrap();
        // The flat layout: a fresh entry stays, an old one goes.
        std::fs::write(tmp.join("fresh"), b"x").unwrap();
        let old = tmp.join("old");
        std::fs::write(&old, b"x").unwrap();
        let hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();

        let own = tmp.join("own");
        std::fs::create_dir_all(&own).unwrap();
        assert_eq!(sweep(&tmp, &own), 2);
        assert!(!dead.exists() && !old.exists());
        assert!(live.join("upload").exists() && tmp.join("fresh").exists() && own.exists());
    }

    #[test]
    fn one_lease_per_process_and_build_root() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("tmp");
        let a = lease(&tmp).unwrap();
        let b = lease(&tmp).unwrap();
        assert_eq!(a.dir(), b.dir());
        assert!(a.dir().starts_with(&tmp));
        // Held: a sweep by another process would leave it alone.
        let lock = File::open(a.dir().join(LOCK_FILE)).unwrap();
        assert!(flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err());
    }
}

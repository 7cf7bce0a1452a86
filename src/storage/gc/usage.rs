//! How much disk a build root takes, counted as `du` does (allocated
//! blocks, a file with several hard links once): a walk with a stack of
//! directories, so memory stays small whatever the number of objects.
//!
//! A file's blocks are shared among its links (blocks / link count), since
//! copying forward from an older generation hard-links: a file in both
//! generations is half in each, and together they count it once.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::storage::{BuildRoot, GenerationDir, GENERATIONS};

/// Size of a part of the build root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub bytes: u64,
    pub files: u64,
}

impl std::ops::AddAssign for Part {
    fn add_assign(&mut self, other: Part) {
        self.bytes += other.bytes;
        self.files += other.files;
    }
}

/// Size of the generations (both areas) and of the staging area.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// By generation, both areas together; 0 is the youngest.
    pub generations: [Part; GENERATIONS],
    /// Staging (`ROOT/tmp`): uploads, unpacking, action directories.
    pub staging: Part,
}

impl Usage {
    /// What the stores take: every generation, the part a collection bounds.
    pub fn stores(&self) -> Part {
        let mut total = Part::default();
        for g in self.generations {
            total += g;
        }
        total
    }
}

/// Measures the build root now (blocking: run it off the async workers).
pub fn measure(root: &BuildRoot) -> Usage {
    let mut usage = Usage::default();
    for GenerationDir { path, index, .. } in root.generation_dirs() {
        usage.generations[index] += measure_dir(&path);
    }
    usage.staging = measure_dir(&root.path().join("tmp"));
    usage
}

/// Disk use by store ([`BuildRoot::store_of`]) and generation, both hash
/// modes together.
pub fn measure_stores(root: &BuildRoot) -> std::collections::BTreeMap<(&'static str, usize), Part> {
    let mut stores = std::collections::BTreeMap::new();
    let subdirs = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    for GenerationDir {
        path,
        index,
        repositories,
    } in root.generation_dirs()
    {
        // Repositories: the generation's own directories; protocol-dependent:
        // those inside each hash mode's directory.
        let dirs = if repositories {
            subdirs(&path)
        } else {
            subdirs(&path).iter().flat_map(|d| subdirs(d)).collect()
        };
        for dir in dirs {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            let store = BuildRoot::store_of(repositories, &name);
            *stores.entry((store, index)).or_default() += measure_dir(&dir);
        }
    }
    stores
}

/// The disk use below `dir` (nothing if it does not exist); entries that
/// vanish during the walk (a concurrent rotation, staging files) are skipped.
pub fn measure_dir(dir: &Path) -> Part {
    let mut part = Part::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        if let Ok(meta) = std::fs::symlink_metadata(&dir) {
            part.bytes += meta.blocks() * 512;
        }
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                part.bytes += meta.blocks() * 512 / meta.nlink().max(1);
                part.files += 1;
            }
        }
    }
    part
}

/// Bytes in a form people read: `12.3 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{HashFunction, ObjectKind};

    #[test]
    fn counts_hard_links_once_and_generations_apart() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let before = measure(&root);
        let cas = root.cas(HashFunction::GitSha1);
        let data = vec![7u8; 100_000];
        let d = cas.put_bytes(ObjectKind::File, &data).unwrap();
        let after = measure(&root);
        let grown = after.generations[0].bytes - before.generations[0].bytes;
        assert!(grown >= 100_000, "{grown}");
        assert_eq!(after.generations[0].files, before.generations[0].files + 1);

        // The same file linked into generation 1 counts half in each.
        let old = root
            .generation_dirs()
            .into_iter()
            .find(|g| g.index == 1 && !g.repositories)
            .unwrap()
            .path
            .join("linked");
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::hard_link(cas.path(ObjectKind::File, &d.hash), &old).unwrap();
        let linked = measure(&root);
        // Only generation 1's directory is new, not the file's blocks.
        let more = linked.stores().bytes - after.stores().bytes;
        assert!(more <= 8192, "{more}");
        assert!(linked.generations[1].bytes >= 50_000);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}

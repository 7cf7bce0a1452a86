//! Answers about immutable objects, remembered: a commit's tree at a
//! subdirectory never changes, so once found it is answered from memory,
//! without a trip to the blocking pool or a git look-up. What serve *has*
//! can change, though: a rotation of the git cache (a collection, `just-mr
//! gc-repo`) may drop the commit, so every rotation forgets all facts, and
//! the next question looks again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::storage::gc::GcLocks;

/// How many facts of one kind are kept (then all are forgotten at once:
/// the next questions cost one look-up each).
const REMEMBERED: usize = 65_536;

/// Facts of one kind, for the rotation they were found in.
pub struct Facts<K, V> {
    gc: Arc<GcLocks>,
    known: Mutex<(u64, HashMap<K, V>)>,
}

impl<K: Eq + Hash, V: Clone> Facts<K, V> {
    pub fn new(gc: Arc<GcLocks>) -> Facts<K, V> {
        Facts {
            gc,
            known: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let rotations = self.gc.rotations();
        let known = self.known.lock().expect("facts lock");
        (known.0 == rotations).then(|| known.1.get(key).cloned())?
    }

    pub fn remember(&self, key: K, value: V) {
        let rotations = self.gc.rotations();
        let mut known = self.known.lock().expect("facts lock");
        if known.0 != rotations || known.1.len() >= REMEMBERED {
            *known = (rotations, HashMap::new());
        }
        known.1.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::BuildRoot;

    #[tokio::test]
    async fn facts_are_forgotten_with_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let facts: Facts<&str, u32> = Facts::new(GcLocks::for_root(&root));
        facts.remember("commit", 7);
        assert_eq!(facts.get(&"commit"), Some(7));
        assert_eq!(facts.get(&"other"), None);
        root.rotate_generations(&root.tmp_dir().join("trash"))
            .unwrap();
        // The next request notices the rotation when it takes its hold.
        let _hold = GcLocks::for_root(&root).hold().await.unwrap();
        assert_eq!(facts.get(&"commit"), None);
        facts.remember("commit", 8);
        assert_eq!(facts.get(&"commit"), Some(8));
    }
}

//! Answers kept in memory, bounded: at most a fixed number of entries (then
//! all are forgotten at once, and the next questions cost one look-up each),
//! so that keys a client chooses cannot grow memory without a limit.
//!
//! A memo of what the build root *holds* (a commit's tree, a target-cache
//! entry) is tied to the gc rotations: a rotation may drop what it names,
//! so every rotation forgets all of it, and the next question looks again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::storage::gc::GcLocks;

/// A bounded map of remembered answers.
pub struct Memo<K, V> {
    limit: usize,
    /// The locks whose rotations make the answers stale, if they can.
    gc: Option<Arc<GcLocks>>,
    /// (rotations when filled, answers)
    known: Mutex<(u64, HashMap<K, V>)>,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    /// Answers that never go stale.
    pub fn new(limit: usize) -> Memo<K, V> {
        Memo {
            limit,
            gc: None,
            known: Mutex::new((0, HashMap::new())),
        }
    }

    /// Answers about what the build root holds: forgotten with a rotation.
    pub fn until_rotation(limit: usize, gc: Arc<GcLocks>) -> Memo<K, V> {
        Memo {
            gc: Some(gc),
            ..Memo::new(limit)
        }
    }

    fn rotations(&self) -> u64 {
        self.gc.as_ref().map_or(0, |gc| gc.rotations())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let rotations = self.rotations();
        let known = self.known.lock().expect("memo lock");
        (known.0 == rotations).then(|| known.1.get(key).cloned())?
    }

    pub fn remember(&self, key: K, value: V) {
        let rotations = self.rotations();
        let mut known = self.known.lock().expect("memo lock");
        if known.0 != rotations || known.1.len() >= self.limit {
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
    async fn answers_are_forgotten_with_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let root = BuildRoot::open(dir.path()).unwrap();
        let memo: Memo<&str, u32> = Memo::until_rotation(8, GcLocks::for_root(&root));
        memo.remember("commit", 7);
        assert_eq!(memo.get(&"commit"), Some(7));
        assert_eq!(memo.get(&"other"), None);
        root.rotate_generations(&root.tmp_dir().join("trash"))
            .unwrap();
        // The next request notices the rotation when it takes its hold.
        let _hold = GcLocks::for_root(&root).hold().await.unwrap();
        assert_eq!(memo.get(&"commit"), None);
        memo.remember("commit", 8);
        assert_eq!(memo.get(&"commit"), Some(8));
    }

    #[test]
    fn at_most_the_limit_is_kept() {
        let memo: Memo<u32, u32> = Memo::new(3);
        for k in 0..3 {
            memo.remember(k, k);
        }
        assert_eq!(memo.get(&0), Some(0));
        memo.remember(3, 3);
        assert_eq!((memo.get(&0), memo.get(&3)), (None, Some(3)));
    }
}

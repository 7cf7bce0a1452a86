//! Long-running operations of Execute: their current state, waiting for them
//! to finish, and merging concurrent executions of the same action.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bazel_remote_apis::google::longrunning::Operation;
use tokio::sync::watch;

/// Finished operations kept for GetOperation/WaitExecution; older ones are dropped.
const KEEP_FINISHED: usize = 16 * 1024;

struct Inner {
    ops: HashMap<String, watch::Receiver<Operation>>,
    /// Running operation per action hash, for merging identical requests.
    running: HashMap<String, String>,
    finished: VecDeque<String>,
}

pub struct Operations {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

/// The handle of whoever runs an operation; finishing it wakes every waiter.
pub struct Completer {
    name: String,
    action: Option<String>,
    tx: watch::Sender<Operation>,
}

/// Either a new operation to run, or an existing one to wait for.
pub enum Started {
    New(Completer, watch::Receiver<Operation>),
    Joined(watch::Receiver<Operation>),
}

impl Default for Operations {
    fn default() -> Self {
        Self::new()
    }
}

impl Operations {
    pub fn new() -> Operations {
        Operations {
            inner: Mutex::new(Inner {
                ops: HashMap::new(),
                running: HashMap::new(),
                finished: VecDeque::new(),
            }),
            next: AtomicU64::new(1),
        }
    }

    /// Starts an operation for `action_hash`, or joins the one already running
    /// for it when `mergeable`. `initial` gets the operation's name filled in.
    pub fn start(&self, action_hash: &str, mergeable: bool, mut initial: Operation) -> Started {
        let mut inner = self.inner.lock().expect("operations lock");
        if mergeable {
            if let Some(rx) = inner
                .running
                .get(action_hash)
                .and_then(|name| inner.ops.get(name))
            {
                return Started::Joined(rx.clone());
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("{action_hash}-{n}");
        initial.name = name.clone();
        let (tx, rx) = watch::channel(initial);
        inner.ops.insert(name.clone(), rx.clone());
        if mergeable {
            inner.running.insert(action_hash.to_string(), name.clone());
        }
        Started::New(
            Completer {
                name,
                action: mergeable.then(|| action_hash.to_string()),
                tx,
            },
            rx,
        )
    }

    /// Records an operation that is done already (e.g. served from the action cache).
    pub fn record_done(&self, action_hash: &str, mut op: Operation) -> Operation {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        op.name = format!("{action_hash}-{n}");
        op.done = true;
        let (_tx, rx) = watch::channel(op.clone());
        let mut inner = self.inner.lock().expect("operations lock");
        inner.ops.insert(op.name.clone(), rx);
        Self::remember_finished(&mut inner, op.name.clone());
        op
    }

    /// Follows the operation `name`, if it is known.
    pub fn get(&self, name: &str) -> Option<watch::Receiver<Operation>> {
        self.inner
            .lock()
            .expect("operations lock")
            .ops
            .get(name)
            .cloned()
    }

    pub fn finish(&self, completer: Completer, mut op: Operation) {
        op.name = completer.name.clone();
        op.done = true;
        let mut inner = self.inner.lock().expect("operations lock");
        if let Some(action) = &completer.action {
            if inner.running.get(action) == Some(&completer.name) {
                inner.running.remove(action);
            }
        }
        // Waiters hold receivers; the final state stays readable after the sender is gone.
        completer.tx.send_replace(op);
        Self::remember_finished(&mut inner, completer.name);
    }

    fn remember_finished(inner: &mut Inner, name: String) {
        inner.finished.push_back(name);
        while inner.finished.len() > KEEP_FINISHED {
            if let Some(old) = inner.finished.pop_front() {
                inner.ops.remove(&old);
            }
        }
    }

    /// Operations currently known (running or kept after finishing).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("operations lock").ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Waits until the followed operation is done and returns its final state.
pub async fn wait_done(mut rx: watch::Receiver<Operation>) -> Operation {
    loop {
        if rx.borrow().done {
            return rx.borrow().clone();
        }
        if rx.changed().await.is_err() {
            // The runner went away without finishing: report what is known.
            return rx.borrow().clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn merge_finish_and_wait() {
        let ops = Operations::new();
        let Started::New(completer, rx) = ops.start("abc", true, Operation::default()) else {
            panic!("first start is new")
        };
        let name = rx.borrow().name.clone();
        assert!(name.starts_with("abc-"));
        let Started::Joined(joined) = ops.start("abc", true, Operation::default()) else {
            panic!("second start joins")
        };
        // Not mergeable: a fresh operation even while one runs.
        assert!(matches!(
            ops.start("abc", false, Operation::default()),
            Started::New(..)
        ));
        let waiter = tokio::spawn(wait_done(joined));
        ops.finish(
            completer,
            Operation {
                done: false,
                ..Default::default()
            },
        );
        let done = waiter.await.unwrap();
        assert!(done.done);
        assert_eq!(done.name, name);
        assert!(ops.get(&name).unwrap().borrow().done);
        // After finishing, a new start is new again.
        assert!(matches!(
            ops.start("abc", true, Operation::default()),
            Started::New(..)
        ));
    }
}

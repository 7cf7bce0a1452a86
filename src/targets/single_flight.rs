//! Identical requests computed once: the first starts the computation in a
//! task of its own, later ones wait for its value. The computation goes on
//! when its waiters leave (its value is cached for the next client), and
//! [`Interest`] tells it whether anyone still waits.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::execute::runner::Interest;

/// The computation's task ended without a value (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the computation was lost")]
pub struct Lost;

type Waiters<V> = (watch::Receiver<Option<V>>, Interest);

pub struct SingleFlight<K, V> {
    inflight: Mutex<HashMap<K, Waiters<V>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

/// Forgets a computation when its task ends, by return or by panic: a key
/// left behind would answer [`Lost`] to every later request.
struct Forget<K: Eq + Hash, V> {
    flight: Arc<SingleFlight<K, V>>,
    key: K,
}

impl<K: Eq + Hash, V> Drop for Forget<K, V> {
    fn drop(&mut self) {
        self.flight
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The value for `key`: joins the computation under way, or starts
    /// `start(interest)`; `on_join` is called when joining. The caller counts
    /// as waiting until this returns or is dropped.
    pub async fn run<Fut>(
        self: &Arc<Self>,
        key: K,
        start: impl FnOnce(Interest) -> Fut,
        on_join: impl FnOnce(),
    ) -> Result<V, Lost>
    where
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, _watching) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&key) {
                Some((rx, interest)) => {
                    on_join();
                    (rx.clone(), interest.watch())
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    let interest = Interest::default();
                    let watching = interest.watch();
                    inflight.insert(key.clone(), (rx.clone(), interest.clone()));
                    let computation = start(interest);
                    let forget = Forget {
                        flight: self.clone(),
                        key,
                    };
                    tokio::spawn(async move {
                        let _forget = forget;
                        let value = computation.await;
                        let _ = tx.send(Some(value));
                    });
                    (rx, watching)
                }
            }
        };
        let done = rx.wait_for(Option::is_some).await.map_err(|_| Lost)?;
        Ok(done.clone().expect("waited for a value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn identical_keys_are_computed_once() {
        let flight = Arc::new(SingleFlight::<&str, usize>::default());
        let started = Arc::new(AtomicUsize::new(0));
        let (release, gate) = watch::channel(false);
        let mut asks = Vec::new();
        for _ in 0..5 {
            let flight = flight.clone();
            let started = started.clone();
            let mut gate = gate.clone();
            asks.push(tokio::spawn(async move {
                flight
                    .run(
                        "k",
                        move |_| async move {
                            let _ = gate.wait_for(|open| *open).await;
                            started.fetch_add(1, Ordering::SeqCst) + 41
                        },
                        || {},
                    )
                    .await
            }));
        }
        // Every asker is waiting (one computing) before the gate opens.
        while flight
            .inflight
            .lock()
            .unwrap()
            .get("k")
            .map(|(_, i)| i.count())
            != Some(5)
        {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for ask in asks {
            assert_eq!(ask.await.unwrap().unwrap(), 41);
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_computation_is_forgotten() {
        let flight = Arc::new(SingleFlight::<&str, u32>::default());
        let lost = flight
            .run("k", |_| async { panic!("computation fails") }, || {})
            .await;
        assert!(lost.is_err());
        // The key is free again: the next request computes anew.
        let value = flight.run("k", |_| async { 7 }, || {}).await;
        assert_eq!(value.unwrap(), 7);
    }
}

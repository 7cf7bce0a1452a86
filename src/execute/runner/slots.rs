//! Slots for actions running at once, handed out so that work someone waits
//! for goes first: a build whose clients all went away keeps running (its
//! result is cached) but yields its turn to any action a client waits for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How many parties wait for a computation (a ServeTarget build, say).
#[derive(Clone, Debug, Default)]
pub struct Interest(Arc<AtomicUsize>);

impl Interest {
    pub fn waiting(&self) -> bool {
        self.count() > 0
    }

    /// How many parties wait now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts one party as waiting until the guard is dropped.
    pub fn watch(&self) -> Watching {
        self.0.fetch_add(1, Ordering::SeqCst);
        Watching(self.0.clone())
    }
}

/// One party waiting; see [`Interest::watch`].
#[derive(Debug)]
pub struct Watching(Arc<AtomicUsize>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who wants one run: clients of the Execute service directly (taken as
/// always waiting), or computations with an [`Interest`] each.
#[derive(Debug, Default)]
pub struct Demand {
    direct: AtomicBool,
    computations: Mutex<Vec<Interest>>,
}

impl Demand {
    pub fn add(&self, interest: Option<&Interest>) {
        match interest {
            Some(i) => self
                .computations
                .lock()
                .expect("demand lock")
                .push(i.clone()),
            None => self.direct.store(true, Ordering::SeqCst),
        }
    }

    pub fn urgent(&self) -> bool {
        self.direct.load(Ordering::SeqCst)
            || self
                .computations
                .lock()
                .expect("demand lock")
                .iter()
                .any(Interest::waiting)
    }
}

struct Waiter {
    demand: Arc<Demand>,
    wake: oneshot::Sender<()>,
}

struct State {
    free: usize,
    queue: VecDeque<Waiter>,
}

/// A fixed number of slots; see the module's comment for the order.
pub struct Slots {
    state: Mutex<State>,
}

/// A slot held; freed on drop.
pub struct Slot(Arc<Slots>);

impl Slot {
    fn new(slots: Arc<Slots>) -> Slot {
        crate::metrics::global().actions_running.inc();
        Slot(slots)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::global().actions_running.dec();
        self.0.release();
    }
}

/// Counted as queued (for the metrics) while it lives.
struct InQueue;

impl InQueue {
    fn new() -> InQueue {
        crate::metrics::global().actions_queued.inc();
        InQueue
    }
}

impl Drop for InQueue {
    fn drop(&mut self) {
        crate::metrics::global().actions_queued.dec();
    }
}

/// A place in the queue; if it is given up after being woken, the slot it
/// was handed goes on to the next waiter.
struct Queued {
    slots: Arc<Slots>,
    wake: Option<oneshot::Receiver<()>>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(mut rx) = self.wake.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.slots.release();
            }
        }
    }
}

impl Slots {
    pub fn new(count: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                free: count.max(1),
                queue: VecDeque::new(),
            }),
        })
    }

    /// Waits for a slot; urgent demands are served before others, each
    /// class in arrival order.
    pub async fn acquire(self: &Arc<Self>, demand: Arc<Demand>) -> Slot {
        let rx = {
            let mut state = self.state.lock().expect("slots lock");
            if state.free > 0 && state.queue.is_empty() {
                state.free -= 1;
                return Slot::new(self.clone());
            }
            let (wake, rx) = oneshot::channel();
            state.queue.push_back(Waiter { demand, wake });
            rx
        };
        let in_queue = InQueue::new();
        let mut queued = Queued {
            slots: self.clone(),
            wake: Some(rx),
        };
        let rx = queued.wake.as_mut().expect("set above");
        if rx.await.is_ok() {
            queued.wake = None;
        }
        drop(in_queue);
        // The sender is only ever dropped after sending (or with the queue,
        // which lives as long as `self`).
        Slot::new(self.clone())
    }

    /// Hands a freed slot to the next waiter, or keeps it free.
    fn release(&self) {
        let mut state = self.state.lock().expect("slots lock");
        loop {
            let next =
                state
                    .queue
                    .iter()
                    .position(|w| w.demand.urgent())
                    .or(if state.queue.is_empty() {
                        None
                    } else {
                        Some(0)
                    });
            let Some(i) = next else {
                state.free += 1;
                return;
            };
            let waiter = state.queue.remove(i).expect("index from the queue");
            if waiter.wake.send(()).is_ok() {
                return;
            }
            // That waiter gave up: try the next one.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn poll<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn waited_for_work_overtakes_abandoned_work() {
        let slots = Slots::new(1);
        let abandoned = Interest::default();
        let wanted = Interest::default();
        let _client = wanted.watch();
        let demand = |i: &Interest| {
            let d = Arc::new(Demand::default());
            d.add(Some(i));
            d
        };
        let mut first = pin!(slots.acquire(demand(&abandoned)));
        let Poll::Ready(held) = poll(first.as_mut()) else {
            panic!("a free slot is taken at once");
        };
        let mut background = pin!(slots.acquire(demand(&abandoned)));
        let mut urgent = pin!(slots.acquire(demand(&wanted)));
        assert!(poll(background.as_mut()).is_pending());
        assert!(poll(urgent.as_mut()).is_pending());
        drop(held);
        assert!(
            poll(background.as_mut()).is_pending(),
            "nobody waits for it"
        );
        let Poll::Ready(second) = poll(urgent.as_mut()) else {
            panic!("the waited-for action gets the slot");
        };
        drop(second);
        assert!(poll(background.as_mut()).is_ready(), "then the rest runs");
    }

    #[test]
    fn a_waiter_that_gives_up_passes_its_slot_on() {
        let slots = Slots::new(1);
        let direct = || {
            let d = Arc::new(Demand::default());
            d.add(None);
            d
        };
        let mut first = pin!(slots.acquire(direct()));
        let Poll::Ready(held) = poll(first.as_mut()) else {
            panic!("free slot");
        };
        let mut quitter = Box::pin(slots.acquire(direct()));
        let mut patient = pin!(slots.acquire(direct()));
        assert!(poll(quitter.as_mut()).is_pending());
        assert!(poll(patient.as_mut()).is_pending());
        drop(held); // wakes the quitter, which then goes away unpolled
        drop(quitter);
        assert!(poll(patient.as_mut()).is_ready());
    }
}

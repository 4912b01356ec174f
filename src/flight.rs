//! Single flight: concurrent requests that need the same authorization-server answer (one
//! token's validation, one metadata document or key set) share one call. The first to
//! miss leads (performs the call); the others follow and wait for its result.
//!
//! Nothing here blocks unless a follower asks to ([`Flight::wait`]): followers may also
//! poll ([`Flight::is_done`]), await ([`Flight::poll_done`], for async hosts) or register a
//! callback ([`Flight::on_done`], for event-loop hosts).

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::cache::Key;

type Callback = Box<dyn FnOnce() + Send>;

struct State<V> {
    result: Option<V>,
    wakers: Vec<Waker>,
    callbacks: Vec<Callback>,
}

/// One in-flight call that followers wait for.
pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
    done: Condvar,
}

impl<V: Clone> Flight<V> {
    fn new() -> Self {
        Flight {
            state: Mutex::new(State { result: None, wakers: Vec::new(), callbacks: Vec::new() }),
            done: Condvar::new(),
        }
    }

    /// True once the leader has published its result.
    pub(crate) fn is_done(&self) -> bool {
        self.state.lock().result.is_some()
    }

    /// The leader's result, if published.
    pub(crate) fn result(&self) -> Option<V> {
        self.state.lock().result.clone()
    }

    /// Blocks the calling thread until the result is published or `timeout` passes; true
    /// if it was published.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock();
        if state.result.is_none() {
            // A spurious wake-up returns early; the caller's loop (or `resume`) copes, and
            // `wait_while_for` rules it out anyway.
            let _ = self.done.wait_while_for(&mut state, |s| s.result.is_none(), timeout);
        }
        state.result.is_some()
    }

    /// For async hosts: ready once the result is published.
    pub(crate) fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if state.result.is_some() {
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Calls `f` once the result is published: at once on this thread if it already is,
    /// else on the thread that publishes it (after every lock is released).
    pub(crate) fn on_done(&self, f: Callback) {
        let mut state = self.state.lock();
        if state.result.is_some() {
            drop(state);
            f();
        } else {
            state.callbacks.push(f);
        }
    }

    fn publish(&self, value: V) {
        let (wakers, callbacks) = {
            let mut state = self.state.lock();
            state.result = Some(value);
            (std::mem::take(&mut state.wakers), std::mem::take(&mut state.callbacks))
        };
        self.done.notify_all();
        wakers.into_iter().for_each(Waker::wake);
        callbacks.into_iter().for_each(|f| f());
    }
}

type Table<V> = Arc<Mutex<HashMap<Key, Arc<Flight<V>>>>>;

/// The in-flight calls of one kind, by key.
pub(crate) struct Flights<V> {
    table: Table<V>,
}

/// The caller's part in a call for one key.
pub(crate) enum Joined<V: Clone> {
    /// Perform the call, then [`Lead::complete`] it.
    Lead(Lead<V>),
    /// Someone else is performing it: wait for their result.
    Follow(Arc<Flight<V>>),
}

/// The leader's handle. Dropping it without completing (the host abandoned the call, or a
/// panic unwound through it) releases the followers with the `abandoned` value.
pub(crate) struct Lead<V: Clone> {
    table: Table<V>,
    key: Key,
    flight: Arc<Flight<V>>,
    abandoned: Option<V>,
}

impl<V: Clone> Flights<V> {
    pub(crate) fn new() -> Self {
        Flights { table: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Joins the call for `key`, or leads it. `abandoned` is what followers get if the
    /// leader disappears without a result.
    pub(crate) fn join(&self, key: Key, abandoned: V) -> Joined<V> {
        let mut table = self.table.lock();
        if let Some(f) = table.get(&key) {
            return Joined::Follow(Arc::clone(f));
        }
        let flight = Arc::new(Flight::new());
        table.insert(key, Arc::clone(&flight));
        Joined::Lead(Lead { table: Arc::clone(&self.table), key, flight, abandoned: Some(abandoned) })
    }

    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.table.lock().len()
    }
}

impl<V: Clone> Lead<V> {
    /// Publishes the result to every follower and ends the flight.
    pub(crate) fn complete(mut self, value: V) {
        self.finish(value);
    }

    fn finish(&mut self, value: V) {
        self.abandoned = None;
        // Out of the table first: a request arriving from now on starts a new flight (or
        // finds the result in the cache), never joins a finished one.
        self.table.lock().remove(&self.key);
        self.flight.publish(value);
    }
}

impl<V: Clone> Drop for Lead<V> {
    fn drop(&mut self) {
        if let Some(v) = self.abandoned.take() {
            self.finish(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn lead(j: Joined<u32>) -> Lead<u32> {
        match j {
            Joined::Lead(l) => l,
            Joined::Follow(_) => panic!("expected to lead"),
        }
    }

    fn follow(j: Joined<u32>) -> Arc<Flight<u32>> {
        match j {
            Joined::Follow(f) => f,
            Joined::Lead(_) => panic!("expected to follow"),
        }
    }

    #[test]
    fn followers_wake_by_every_mechanism_and_the_table_empties() {
        let flights: Flights<u32> = Flights::new();
        let leader = lead(flights.join([9; 32], 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let f = follow(flights.join([9; 32], 0));
                std::thread::spawn(move || (f.wait(Duration::from_secs(5)), f.result()))
            })
            .collect();
        let polled = follow(flights.join([9; 32], 0));
        let called = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&called);
        polled.on_done(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(!polled.is_done());
        std::thread::sleep(Duration::from_millis(20));
        leader.complete(7);
        for t in threads {
            assert_eq!(t.join().unwrap(), (true, Some(7)));
        }
        assert!(polled.is_done());
        assert_eq!(called.load(Ordering::SeqCst), 1);
        // A callback registered after the result runs at once.
        let c = Arc::clone(&called);
        polled.on_done(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(called.load(Ordering::SeqCst), 2);
        assert_eq!(flights.in_flight(), 0);
        assert!(matches!(flights.join([9; 32], 0), Joined::Lead(_)), "a finished flight is never joined");
    }

    #[test]
    fn abandoned_leader_releases_followers_and_timeouts_are_bounded() {
        let flights: Flights<u32> = Flights::new();
        let leader = lead(flights.join([1; 32], 99));
        let f = follow(flights.join([1; 32], 99));
        assert!(!f.wait(Duration::from_millis(10)), "no result yet: the wait times out");
        drop(leader);
        assert!(f.wait(Duration::from_secs(1)));
        assert_eq!(f.result(), Some(99));
        assert_eq!(flights.in_flight(), 0);
    }

    #[test]
    fn async_followers_are_woken() {
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let flights: Flights<u32> = Flights::new();
        let leader = lead(flights.join([2; 32], 0));
        let f = follow(flights.join([2; 32], 0));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(f.poll_done(&mut cx).is_pending());
        assert!(f.poll_done(&mut cx).is_pending(), "the same waker is kept once");
        leader.complete(3);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(f.poll_done(&mut cx).is_ready());
    }
}

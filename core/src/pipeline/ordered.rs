//! Async steps: order per key, concurrency across keys, and no waiting for other units.
//!
//! An async step pulls items from the step before it as it has room for them, and starts
//! each as soon as no earlier item sharing one of its keys is still waiting or running in the
//! step, up to `parallel` at once. It pulls what its free calls need first and, while its calls
//! are out, up to `parallel` more that could start (past any that wait for their key), so an
//! ended call finds its successor ready and the steps before work during the wait, not in one
//! burst before the first call. Its outputs flow on to the next step right away, so a unit
//! goes through a whole pipeline without waiting for other units to finish earlier steps, and
//! the units that start early finish early, whatever the deadline.
//!
//! Items without a key have no order to keep and start whenever there is room. An item standing
//! for several keys (a batch) waits for every one of them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::{FutureExt, stream};
use smallvec::SmallVec;

use super::Items;
use super::limit::Limiter;
use super::run::{BLOCKED, NOT_STARTED, RunCtx, panic_error};
use crate::error::StepError;
use crate::uow::{Anchor, Work, anchor_of, keys_of};

type Keys = SmallVec<[u64; 2]>;

/// Keys are hashes already: hashing them again would be wasted work.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

struct Slot<T> {
    item: Option<T>,
    keys: Keys,
    /// How many of its keys have an earlier item queued or running.
    waits: u32,
}

/// Which items may start: an item is ready when it heads the queue of each of its keys. Pure
/// bookkeeping, no I/O.
pub(crate) struct Scheduler<T> {
    slots: Vec<Slot<T>>,
    queues: KeyMap<VecDeque<usize>>,
    ready: BinaryHeap<Reverse<usize>>,
    live: usize,
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Scheduler {
            slots: Vec::new(),
            queues: KeyMap::default(),
            ready: BinaryHeap::new(),
            live: 0,
        }
    }
}

impl<T> Scheduler<T> {
    /// Queues an item behind the earlier items of its keys.
    pub(crate) fn push(&mut self, keys: Keys, item: T) {
        let slot = self.slots.len();
        let mut waits = 0;
        for k in &keys {
            let queue = self.queues.entry(*k).or_default();
            if !queue.is_empty() {
                waits += 1;
            }
            queue.push_back(slot);
        }
        if waits == 0 {
            self.ready.push(Reverse(slot));
        }
        self.slots.push(Slot {
            item: Some(item),
            keys,
            waits,
        });
        self.live += 1;
    }

    /// The earliest ready item, taken out to run.
    pub(crate) fn pop_ready(&mut self) -> Option<(usize, T)> {
        let Reverse(slot) = self.ready.pop()?;
        let item = self.slots[slot].item.take()?;
        Some((slot, item))
    }

    /// The keys of an item.
    pub(crate) fn keys(&self, slot: usize) -> &[u64] {
        &self.slots[slot].keys
    }

    /// The item in `slot` is over: the next item of each of its keys moves up.
    pub(crate) fn finish(&mut self, slot: usize) {
        let keys = std::mem::take(&mut self.slots[slot].keys);
        for k in &keys {
            let Some(queue) = self.queues.get_mut(k) else {
                continue;
            };
            queue.pop_front();
            match queue.front() {
                Some(&next) => {
                    let s = &mut self.slots[next];
                    s.waits -= 1;
                    if s.waits == 0 {
                        self.ready.push(Reverse(next));
                    }
                }
                None => {
                    self.queues.remove(k);
                }
            }
        }
        self.slots[slot].keys = keys;
        self.live -= 1;
    }

    /// How many items may start now.
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// True when every item pushed is over.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }
}

enum Ended<U> {
    Out(U),
    Failed(StepError),
    NotStarted,
}

/// An async step over each item (`then`, `then_retry`): `call` runs up to `parallel` items at
/// once, in order per key. `limiter` paces the first attempt of each call.
pub(crate) fn each<T, U, F, Fut>(
    ctx: Arc<RunCtx>,
    upstream: Items<T>,
    parallel: usize,
    limiter: Option<Arc<Limiter>>,
    call: Arc<F>,
) -> Items<U>
where
    T: Work,
    U: Work,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<U, StepError>> + Send + 'static,
{
    let parallel = parallel.max(1);
    let mut upstream = Some(upstream);
    let mut sched: Scheduler<T> = Scheduler::default();
    let mut running = FuturesUnordered::new();
    let task_ctx = Arc::clone(&ctx);
    let task = move |slot: usize, item: T| {
        let (ctx, limiter, call) = (Arc::clone(&task_ctx), limiter.clone(), Arc::clone(&call));
        async move {
            let anchor = anchor_of(&item);
            if let Some(limiter) = &limiter
                && !limiter.acquire(&ctx.deadline).await
            {
                return (slot, anchor, Ended::NotStarted);
            }
            let result = match catch_unwind(AssertUnwindSafe(|| call(item))) {
                Ok(fut) => AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|p| Err(panic_error(p))),
                Err(p) => Err(panic_error(p)),
            };
            let ended = match result {
                Ok(u) => Ended::Out(u),
                Err(e) => Ended::Failed(e),
            };
            (slot, anchor, ended)
        }
    };
    stream::poll_fn(move |cx| {
        loop {
            // only what the free calls need comes through the steps before first: the calls go
            // out before the rest of the window is pulled (pulling it all took ~6 ms a
            // 500-record window with no call out)
            let free = parallel - running.len();
            if sched.ready_len() < free {
                pull(&mut upstream, cx, |item| {
                    sched.push(keys_of(&item), item);
                    sched.ready_len() >= free
                });
            }
            while running.len() < parallel {
                let Some((slot, item)) = sched.pop_ready() else {
                    break;
                };
                if ctx.blocked(sched.keys(slot)) {
                    ctx.not_started(&item, BLOCKED);
                    sched.finish(slot);
                } else if ctx.deadline.passed() {
                    ctx.not_started(&item, NOT_STARTED);
                    sched.finish(slot);
                } else {
                    running.push(task(slot, item));
                }
            }
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some((slot, anchor, ended))) => {
                    sched.finish(slot);
                    match ended {
                        Ended::Out(u) => return Poll::Ready(Some(u)),
                        Ended::Failed(e) => ctx.failed(anchor, e),
                        Ended::NotStarted => ctx.retry(anchor, NOT_STARTED),
                    }
                }
                Poll::Ready(None) | Poll::Pending => {
                    // the calls are out: pull ahead while they are, so a call that ends finds
                    // the next item ready and the steps before do their work in the wait
                    if upstream.is_some() && sched.ready_len() < parallel {
                        pull(&mut upstream, cx, |item| {
                            sched.push(keys_of(&item), item);
                            sched.ready_len() >= parallel
                        });
                        if running.len() < parallel && sched.ready_len() > 0 {
                            continue;
                        }
                    }
                    return if upstream.is_none() && sched.is_empty() && running.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    })
    .boxed()
}

/// Moves the items the upstream has ready into `push` until `push` says it has enough (true);
/// drops the upstream once it ends.
fn pull<T>(
    upstream: &mut Option<Items<T>>,
    cx: &mut std::task::Context<'_>,
    mut push: impl FnMut(T) -> bool,
) {
    let Some(up) = upstream.as_mut() else {
        return;
    };
    loop {
        match up.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                if push(item) {
                    return;
                }
            }
            Poll::Ready(None) => {
                *upstream = None;
                return;
            }
            Poll::Pending => return,
        }
    }
}

/// Items waiting for an all-at-once call, and the keys of the calls running.
struct Chunks<T> {
    waiting: VecDeque<(Keys, T)>,
    held: KeyMap<u32>,
}

impl<T> Chunks<T> {
    /// Every waiting item that may start now, in order: its keys are not held by a running
    /// call, and no earlier item of one of its keys is left waiting. Several items of one key
    /// may go together (the call answers them in order).
    fn take(&mut self) -> (Vec<(Keys, T)>, Keys) {
        let mut chunk = Vec::new();
        let mut chunk_keys = Keys::new();
        let mut skipped: HashSet<u64, BuildHasherDefault<KeyHasher>> = HashSet::default();
        let mut rest = VecDeque::new();
        for (keys, item) in self.waiting.drain(..) {
            let free = keys
                .iter()
                .all(|k| !self.held.contains_key(k) && !skipped.contains(k));
            if free {
                for k in &keys {
                    if !chunk_keys.contains(k) {
                        chunk_keys.push(*k);
                    }
                }
                chunk.push((keys, item));
            } else {
                skipped.extend(keys.iter().copied());
                rest.push_back((keys, item));
            }
        }
        self.waiting = rest;
        for k in &chunk_keys {
            *self.held.entry(*k).or_default() += 1;
        }
        (chunk, chunk_keys)
    }

    fn release(&mut self, keys: &[u64]) {
        for k in keys {
            if let Some(n) = self.held.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(k);
                }
            }
        }
    }
}

/// An async step over the items ready together (`then_all`): `call` gets them all at once and
/// answers per item, up to `parallel` calls at once, in order per key. A transient failure
/// stops the later items of its key, even those the same call put through.
pub(crate) fn all<T, U, F, Fut>(
    ctx: Arc<RunCtx>,
    upstream: Items<T>,
    parallel: usize,
    call: Arc<F>,
) -> Items<U>
where
    T: Work,
    U: Work,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<U, StepError>>> + Send + 'static,
{
    let parallel = parallel.max(1);
    let mut upstream = Some(upstream);
    let mut chunks: Chunks<T> = Chunks {
        waiting: VecDeque::new(),
        held: KeyMap::default(),
    };
    let mut running = FuturesUnordered::new();
    let mut outbox: VecDeque<U> = VecDeque::new();
    let task = move |keys: Keys, items: Vec<T>| {
        let call = Arc::clone(&call);
        async move {
            let anchors: Vec<Anchor> = items.iter().map(anchor_of).collect();
            let n = items.len();
            let answered = match catch_unwind(AssertUnwindSafe(|| call(items))) {
                Ok(fut) => AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .map_err(panic_error),
                Err(p) => Err(panic_error(p)),
            };
            let results: Vec<Result<U, StepError>> = match answered {
                Ok(results) if results.len() == n => results,
                Ok(results) => {
                    let msg = format!("step answered {} results for {n} items", results.len());
                    (0..n)
                        .map(|_| Err(StepError::poison_msg(msg.clone())))
                        .collect()
                }
                Err(e) => (0..n)
                    .map(|_| Err(StepError::poison_msg(e.to_string()).named("Panic")))
                    .collect(),
            };
            (keys, anchors, results)
        }
    };
    stream::poll_fn(move |cx| {
        loop {
            if let Some(u) = outbox.pop_front() {
                return Poll::Ready(Some(u));
            }
            pull(&mut upstream, cx, |item| {
                chunks.waiting.push_back((keys_of(&item), item));
                false
            });
            if running.len() < parallel && !chunks.waiting.is_empty() {
                let (chunk, keys) = chunks.take();
                let mut items = Vec::with_capacity(chunk.len());
                for (item_keys, item) in chunk {
                    if ctx.blocked(&item_keys) {
                        ctx.not_started(&item, BLOCKED);
                    } else if ctx.deadline.passed() {
                        ctx.not_started(&item, NOT_STARTED);
                    } else {
                        items.push(item);
                    }
                }
                if items.is_empty() {
                    chunks.release(&keys);
                } else {
                    running.push(task(keys, items));
                }
            }
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some((keys, anchors, results))) => {
                    chunks.release(&keys);
                    for (anchor, result) in anchors.into_iter().zip(results) {
                        let item_keys: Keys = anchor.iter().filter_map(|o| o.key_hash).collect();
                        if ctx.blocked(&item_keys) {
                            ctx.retry(anchor, BLOCKED);
                            continue;
                        }
                        match result {
                            Ok(u) => outbox.push_back(u),
                            Err(e) => ctx.failed(anchor, e),
                        }
                    }
                }
                Poll::Ready(None) | Poll::Pending => {
                    if !outbox.is_empty() {
                        continue;
                    }
                    let idle = running.is_empty();
                    if idle && !chunks.waiting.is_empty() {
                        // everything waiting became free when the last call ended
                        continue;
                    }
                    return if upstream.is_none() && idle && chunks.waiting.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[u64]) -> Keys {
        ks.iter().copied().collect()
    }

    #[test]
    fn an_item_waits_for_the_earlier_items_of_each_of_its_keys() {
        let mut s = Scheduler::default();
        s.push(keys(&[1]), "a0");
        s.push(keys(&[2]), "b0");
        s.push(keys(&[1]), "a1");
        s.push(keys(&[]), "none");
        s.push(keys(&[1, 2]), "ab");
        let (a0, _) = s.pop_ready().unwrap();
        let (b0, _) = s.pop_ready().unwrap();
        assert_eq!(s.pop_ready().map(|(_, i)| i), Some("none"));
        assert!(s.pop_ready().is_none(), "a1 waits for a0, ab for both");
        s.finish(b0);
        assert!(s.pop_ready().is_none(), "ab still waits for a1 on key 1");
        s.finish(a0);
        let (a1, item) = s.pop_ready().unwrap();
        assert_eq!(item, "a1");
        s.finish(a1);
        let (ab, item) = s.pop_ready().unwrap();
        assert_eq!(item, "ab");
        s.finish(ab);
        s.finish(3);
        assert!(s.is_empty());
    }

    #[test]
    fn a_step_pulls_what_its_calls_need_and_as_many_again_not_the_whole_upstream() {
        use crate::deadline::Deadline;
        use crate::event::Event;
        use crate::record::SourceRecord;
        use crate::settings::Settings;
        use crate::uow::UnitOfWork;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let record = Arc::new(SourceRecord::Raw(serde_json::Value::Null));
        let units: Vec<UnitOfWork> = (0..100u32)
            .map(|i| {
                let mut event = Event::new(format!("e{i}"), "t", 1);
                event.partition_key = Some(format!("k{i}"));
                UnitOfWork::new(i, i, Arc::clone(&record), event, None, false)
            })
            .collect();
        let pulled = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&pulled);
        let upstream = stream::iter(units)
            .inspect(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            })
            .boxed();
        let ctx = Arc::new(RunCtx::new(
            Arc::from("p"),
            Deadline::none(),
            100,
            Arc::default(),
            Arc::default(),
            Arc::new(Settings::default()),
        ));
        // calls that never answer: what is pulled is what the first poll pulls
        let call =
            Arc::new(|_: UnitOfWork| futures::future::pending::<Result<UnitOfWork, StepError>>());
        let mut out = each(ctx, upstream, 4, None, call);
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(out.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(
            pulled.load(Ordering::Relaxed),
            8,
            "4 to start, 4 ready for when a call ends"
        );
        assert!(out.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(
            pulled.load(Ordering::Relaxed),
            8,
            "polled again with its calls out and 4 ready, it pulls no more"
        );
    }

    #[test]
    fn a_chunk_takes_every_free_item_and_keeps_order_behind_held_keys() {
        let mut c = Chunks {
            waiting: VecDeque::new(),
            held: KeyMap::default(),
        };
        for (k, item) in [(1, "a0"), (2, "b0"), (1, "a1")] {
            c.waiting.push_back((keys(&[k]), item));
        }
        let (first, held) = c.take();
        let items: Vec<_> = first.iter().map(|(_, i)| *i).collect();
        assert_eq!(items, ["a0", "b0", "a1"]);
        c.waiting.push_back((keys(&[1]), "a2"));
        c.waiting.push_back((keys(&[3]), "c0"));
        let (second, held2) = c.take();
        let items: Vec<_> = second.iter().map(|(_, i)| *i).collect();
        assert_eq!(items, ["c0"], "key 1 is held by the running call");
        c.release(&held);
        c.release(&held2);
        let (third, _) = c.take();
        assert_eq!(third.len(), 1);
    }
}

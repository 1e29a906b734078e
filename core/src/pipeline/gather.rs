//! Steps that combine items: batches of the items ready together, and groups over them all.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::Poll;

use futures::stream::{self, StreamExt};

use super::Items;
use super::run::{RunCtx, panic_error};
use crate::error::StepError;
use crate::uow::{Batch, Group, Work, anchor_of, first_position};

/// The size of an item, in the bytes a batch counts.
pub(crate) type SizeOf<T> = Arc<dyn Fn(&T) -> usize + Send + Sync>;

/// How a batch is sized: at most `max_count` items and, with `size`, `max_bytes` bytes.
pub(crate) struct Limits<T> {
    pub(crate) max_count: usize,
    pub(crate) max_bytes: usize,
    pub(crate) size: Option<SizeOf<T>>,
}

/// Batches of the items ready together: whenever the step before has nothing more ready (or
/// a batch is full), what has gathered goes on. With a synchronous step before, every batch
/// is full; behind a slow async step, batches go on as they form instead of waiting for the
/// slowest unit.
pub(crate) fn batches<T: Work>(
    ctx: Arc<RunCtx>,
    upstream: Items<T>,
    limits: Limits<T>,
) -> Items<Batch<T>> {
    let max_count = limits.max_count.max(1);
    let mut upstream = Some(upstream);
    let mut buffer: VecDeque<(usize, T)> = VecDeque::new();
    stream::poll_fn(move |cx| {
        if let Some(up) = upstream.as_mut() {
            loop {
                match up.poll_next_unpin(cx) {
                    Poll::Ready(Some(item)) => {
                        let n = match &limits.size {
                            None => 0,
                            Some(size) => match catch_unwind(AssertUnwindSafe(|| size(&item))) {
                                Ok(n) => n,
                                Err(p) => {
                                    ctx.fault(anchor_of(&item), panic_error(p));
                                    continue;
                                }
                            },
                        };
                        if n > limits.max_bytes {
                            let e = StepError::poison_msg(format!(
                                "entry of {n} bytes exceeds the batch limit of {} bytes",
                                limits.max_bytes
                            ));
                            ctx.fault(anchor_of(&item), e.named("OversizeError"));
                            continue;
                        }
                        buffer.push_back((n, item));
                        if buffer.len() >= max_count && limits.size.is_none() {
                            break;
                        }
                    }
                    Poll::Ready(None) => {
                        upstream = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if buffer.is_empty() {
            return if upstream.is_none() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some((n, _)) = buffer.front() {
            if batch.len() == max_count || (!batch.is_empty() && bytes + n > limits.max_bytes) {
                break;
            }
            bytes += n;
            if let Some((_, item)) = buffer.pop_front() {
                batch.push(item);
            }
        }
        Poll::Ready(Some(Batch(batch)))
    })
    .boxed()
}

/// Waits for every item, then groups them by `key` in batch order: groups in order of their
/// first item, members in batch order. A panicking key faults its item.
pub(crate) fn groups<T: Work>(
    ctx: Arc<RunCtx>,
    upstream: Items<T>,
    key: Arc<dyn Fn(&T) -> String + Send + Sync>,
) -> Items<Group<T>> {
    stream::once(async move {
        let mut items: Vec<T> = upstream.collect().await;
        // items reach here in the order their keys finished; groups follow the batch's order
        items.sort_by_key(first_position);
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<Group<T>> = Vec::new();
        for item in items {
            let k = match catch_unwind(AssertUnwindSafe(|| key(&item))) {
                Ok(k) => k,
                Err(p) => {
                    ctx.fault(anchor_of(&item), panic_error(p));
                    continue;
                }
            };
            match index.get(&k) {
                Some(&i) => groups[i].items.push(item),
                None => {
                    index.insert(k.clone(), groups.len());
                    groups.push(Group {
                        key: k,
                        items: vec![item],
                    });
                }
            }
        }
        stream::iter(groups)
    })
    .flatten()
    .boxed()
}

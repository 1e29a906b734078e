//! Order per key across pipelines ([`HandlerBuilder::in_key_order`](crate::HandlerBuilder::in_key_order)):
//! a unit enters the pipelines that take it only once the previous unit of its key has
//! finished in every pipeline that took that one.
//!
//! The gate hands each pipeline its units through a channel, in batch order per key; a
//! pipeline's run settling a unit tells the gate, which lets the key's next unit in.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use smallvec::SmallVec;

use crate::uow::UnitOfWork;

/// The pipelines (by index) that take a unit.
pub(crate) type Takers = SmallVec<[u16; 2]>;

struct Inner {
    /// Each unit until it is let in: the pipelines then hold it, and free it when done.
    units: Vec<Option<UnitOfWork>>,
    takers: Vec<Takers>,
    /// Pipelines still running each unit.
    pending: Vec<u16>,
    /// The next unit of the same key that some pipeline takes.
    next: Vec<Option<u32>>,
    senders: Vec<Option<UnboundedSender<UnitOfWork>>>,
    /// Units each pipeline has still to receive; its channel closes at 0.
    to_send: Vec<usize>,
}

impl Inner {
    fn release(&mut self, unit: usize) {
        let Some(whole) = self.units.get_mut(unit).and_then(Option::take) else {
            return;
        };
        let last = self.takers[unit].len().saturating_sub(1);
        let mut whole = Some(whole);
        for (i, &p) in self.takers[unit].iter().enumerate() {
            let p = p as usize;
            // the last pipeline gets the unit itself, the others a handle on it
            let u = if i == last {
                whole.take()
            } else {
                whole.clone()
            };
            if let (Some(tx), Some(u)) = (&self.senders[p], u) {
                // a closed receiver means the run was cut short: nothing left to order
                let _ = tx.unbounded_send(u);
            }
            self.to_send[p] -= 1;
            if self.to_send[p] == 0 {
                self.senders[p] = None;
            }
        }
    }
}

/// Lets each key's units into the pipelines one at a time.
pub(crate) struct KeyGate {
    inner: Mutex<Inner>,
}

impl KeyGate {
    /// A gate over `units` (the batch's, in order), `takers[u]` naming the pipelines that take
    /// unit `u`; returns it with each pipeline's incoming units.
    pub(crate) fn new(
        units: Vec<UnitOfWork>,
        takers: Vec<Takers>,
        pipelines: usize,
    ) -> (Self, Vec<UnboundedReceiver<UnitOfWork>>) {
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for _ in 0..pipelines {
            let (tx, rx) = unbounded();
            senders.push(Some(tx));
            receivers.push(rx);
        }
        let mut to_send = vec![0; pipelines];
        let mut next = vec![None; units.len()];
        let mut last_of_key: HashMap<u64, usize> = HashMap::new();
        let mut first = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            if takers[u].is_empty() {
                continue;
            }
            for &p in &takers[u] {
                to_send[p as usize] += 1;
            }
            match unit.shared.key_hash {
                None => first.push(u),
                Some(k) => match last_of_key.insert(k, u) {
                    None => first.push(u),
                    Some(prev) => next[prev] = Some(u as u32),
                },
            }
        }
        for (p, n) in to_send.iter().enumerate() {
            if *n == 0 {
                senders[p] = None;
            }
        }
        let mut inner = Inner {
            // a unit no pipeline takes is never let in: it is not kept either
            units: units
                .into_iter()
                .zip(&takers)
                .map(|(u, t)| (!t.is_empty()).then_some(u))
                .collect(),
            pending: takers.iter().map(|t| t.len() as u16).collect(),
            takers,
            next,
            senders,
            to_send,
        };
        for u in first {
            inner.release(u);
        }
        (
            KeyGate {
                inner: Mutex::new(inner),
            },
            receivers,
        )
    }

    /// One pipeline is done with `unit` (whatever its outcome): once all are, the next unit
    /// of its key goes in.
    pub(crate) fn finished(&self, unit: u32) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let u = unit as usize;
        let Some(pending) = inner.pending.get_mut(u) else {
            return;
        };
        if *pending == 0 {
            return;
        }
        *pending -= 1;
        if *pending == 0
            && let Some(n) = inner.next[u]
        {
            inner.release(n as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::record::SourceRecord;
    use futures::StreamExt;
    use std::sync::Arc;

    #[test]
    fn the_gate_keeps_no_unit_it_has_let_in() {
        let record = Arc::new(SourceRecord::Raw(serde_json::Value::Null));
        let units: Vec<UnitOfWork> = (0..3u32)
            .map(|i| {
                let mut event = Event::new(format!("e{i}"), "t", 1);
                event.partition_key = Some("k".into());
                UnitOfWork::new(i, i, Arc::clone(&record), event, None, false)
            })
            .collect();
        let first = Arc::clone(&units[0].shared);
        let takers = vec![Takers::from_slice(&[0, 1]); 3];
        let (gate, mut receivers) = KeyGate::new(units, takers, 2);
        let mut rx1 = receivers.pop().unwrap();
        let mut rx0 = receivers.pop().unwrap();
        let (a, b) = futures::executor::block_on(async { (rx0.next().await, rx1.next().await) });
        assert_eq!(
            Arc::strong_count(&first),
            3,
            "this test's handle and the two pipelines'"
        );
        drop((a, b));
        assert_eq!(
            Arc::strong_count(&first),
            1,
            "once the pipelines are done with it, the unit is freed: the gate holds none"
        );
        gate.finished(0);
        gate.finished(0);
        let next = futures::executor::block_on(rx0.next()).unwrap();
        assert_eq!(next.shared.index, 1, "the key's next unit goes in");
    }
}

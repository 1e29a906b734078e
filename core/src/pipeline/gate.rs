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
    units: Vec<UnitOfWork>,
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
        for &p in &self.takers[unit] {
            let p = p as usize;
            if let Some(tx) = &self.senders[p] {
                // a closed receiver means the run was cut short: nothing left to order
                let _ = tx.unbounded_send(self.units[unit].clone());
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
        units: &[UnitOfWork],
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
            units: units.to_vec(),
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

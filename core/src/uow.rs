//! Units of work: what flows through a pipeline.
//!
//! A [`UnitOfWork`] holds the original record and its decoded [`Event`] behind one `Arc`, plus a
//! typed per-pipeline `state` that steps replace as they go (an update request, a response...).
//! Cloning one is a reference-count increment plus a clone of the state.
//!
//! Steps that combine units ([`Batch`], [`Group`], [`Compacted`]) keep every member, so an
//! outcome reached for the combination reaches each original record.

use std::sync::Arc;

use crate::event::Event;
use crate::record::SourceRecord;

/// The source's own ordering key.
#[derive(Debug, Clone)]
pub(crate) enum OrderKey {
    /// Used when the event has no `partitionKey` (a Kinesis partition key, say).
    Fallback(String),
    /// Wins over the event's `partitionKey` (an SQS FIFO message group).
    Group(String),
}

/// Where a unit of work came from: its original record, decoded event and ordering key.
/// Shared (behind an `Arc`) by every clone of the unit and every pipeline it flows through.
pub struct Origin {
    pub(crate) index: u32,
    /// Ordinal among the batch's units of work (a record may carry several).
    pub(crate) unit: u32,
    /// Hash of the ordering key, computed once for the engine's per-key bookkeeping.
    pub(crate) key_hash: Option<u64>,
    pub(crate) record: Arc<SourceRecord>,
    pub(crate) event: Event,
    pub(crate) source_key: Option<OrderKey>,
    pub(crate) latched: bool,
}

/// One decoded record moving through a pipeline, with typed state `S`.
///
/// ```
/// use lambda_stream::{Event, UnitOfWork};
///
/// let uow = UnitOfWork::for_test(Event::new("1", "thing-created", 0).with_partition_key("t1"));
/// let uow = uow.with(42_u32); // replace the state
/// assert_eq!(uow.state, 42);
/// assert_eq!(uow.partition_key(), Some("t1"));
/// ```
pub struct UnitOfWork<S = ()> {
    pub(crate) shared: Arc<Origin>,
    /// State added by the pipeline's steps.
    pub state: S,
}

impl<S: Clone> Clone for UnitOfWork<S> {
    fn clone(&self) -> Self {
        UnitOfWork {
            shared: Arc::clone(&self.shared),
            state: self.state.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for UnitOfWork<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("index", &self.shared.index)
            .field("event", &self.shared.event)
            .field("state", &self.state)
            .finish()
    }
}

impl UnitOfWork<()> {
    pub(crate) fn new(
        index: u32,
        unit: u32,
        record: Arc<SourceRecord>,
        event: Event,
        source_key: Option<OrderKey>,
        latched: bool,
    ) -> Self {
        let mut origin = Origin {
            index,
            unit,
            key_hash: None,
            record,
            event,
            source_key,
            latched,
        };
        origin.key_hash = origin.partition_key().map(hash_key);
        UnitOfWork {
            shared: Arc::new(origin),
            state: (),
        }
    }

    /// This unit as the `unit`-th of its batch, with `event` (a redeemed claim check) in place
    /// of its own when given.
    pub(crate) fn renumbered(self, unit: u32, event: Option<Event>) -> Self {
        if unit == self.shared.unit && event.is_none() {
            return self;
        }
        let origin = owned(self.shared);
        UnitOfWork::new(
            origin.index,
            unit,
            origin.record,
            event.unwrap_or(origin.event),
            origin.source_key,
            origin.latched,
        )
    }

    /// This unit with its record's position and its own ordinal moved on by `records` and
    /// `units`: a window decoded in chunks numbers each chunk's units from 0.
    pub(crate) fn shifted(mut self, records: u32, units: u32) -> Self {
        // a unit just decoded has no other handle, so is moved on in place
        if let Some(origin) = Arc::get_mut(&mut self.shared) {
            origin.index += records;
            origin.unit += units;
            return self;
        }
        let mut origin = owned(self.shared);
        origin.index += records;
        origin.unit += units;
        UnitOfWork {
            shared: Arc::new(origin),
            state: self.state,
        }
    }

    /// A unit of work around `event` with no original record, for tests of mapping functions.
    pub fn for_test(event: Event) -> Self {
        let record = Arc::new(SourceRecord::Raw(serde_json::Value::Null));
        UnitOfWork::new(0, 0, record, event, None, false)
    }
}

/// The origin itself, copied when another handle shares it.
fn owned(shared: Arc<Origin>) -> Origin {
    Arc::try_unwrap(shared).unwrap_or_else(|shared| Origin {
        index: shared.index,
        unit: shared.unit,
        key_hash: shared.key_hash,
        record: Arc::clone(&shared.record),
        event: shared.event.clone(),
        source_key: shared.source_key.clone(),
        latched: shared.latched,
    })
}

impl<S> UnitOfWork<S> {
    /// The decoded event.
    pub fn event(&self) -> &Event {
        &self.shared.event
    }

    /// The original Lambda record.
    pub fn record(&self) -> &SourceRecord {
        &self.shared.record
    }

    /// Position of the original record in the Lambda batch.
    pub fn position(&self) -> usize {
        self.shared.index as usize
    }

    /// The key that orders this unit: the event's `partitionKey`, else the source's own key
    /// (Kinesis partition key); for an SQS FIFO message, its message group.
    pub fn partition_key(&self) -> Option<&str> {
        self.shared.partition_key()
    }

    /// Where this unit came from.
    pub fn origin(&self) -> &Arc<Origin> {
        &self.shared
    }

    /// True when the record was written by a listener with `latched: true` (a materialized view),
    /// so a cdc trigger on the same table can skip it instead of echoing it back to the bus.
    pub fn is_latched(&self) -> bool {
        self.shared.latched
    }

    /// The same unit without its state (what keys and rules look at).
    pub(crate) fn without_state(&self) -> UnitOfWork {
        UnitOfWork {
            shared: Arc::clone(&self.shared),
            state: (),
        }
    }

    /// The same unit with new state.
    pub fn with<T>(self, state: T) -> UnitOfWork<T> {
        UnitOfWork {
            shared: self.shared,
            state,
        }
    }

    /// The same unit with its state mapped.
    pub fn map_state<T>(self, f: impl FnOnce(S) -> T) -> UnitOfWork<T> {
        UnitOfWork {
            shared: self.shared,
            state: f(self.state),
        }
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("position", &self.index)
            .field("event_id", &self.event.id)
            .finish()
    }
}

impl Origin {
    /// The decoded event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The original Lambda record.
    pub fn record(&self) -> &SourceRecord {
        &self.record
    }

    /// Position of the original record in the Lambda batch.
    pub fn position(&self) -> usize {
        self.index as usize
    }

    /// The key that orders this record (see [`UnitOfWork::partition_key`]).
    pub fn partition_key(&self) -> Option<&str> {
        match &self.source_key {
            Some(OrderKey::Group(group)) => Some(group),
            Some(OrderKey::Fallback(key)) => {
                Some(self.event.partition_key.as_deref().unwrap_or(key))
            }
            None => self.event.partition_key.as_deref(),
        }
    }
}

/// A stable hash of an ordering key. Keys are compared by hash: a collision can only make two
/// keys share an order (less concurrency), never reorder one.
pub(crate) fn hash_key(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

/// Anything that flows through a pipeline: it tells the engine which original records it stands
/// for, so outcomes reach them and order is kept per key.
///
/// Implemented for [`UnitOfWork`], [`Batch`], [`Group`] and [`Compacted`]; a type of your own
/// implements it by visiting the units it holds.
pub trait Work: Send + 'static {
    /// Calls `f` with the origin of every record this item stands for.
    fn for_each_origin(&self, f: &mut dyn FnMut(&Arc<Origin>));
}

impl<S: Send + 'static> Work for UnitOfWork<S> {
    fn for_each_origin(&self, f: &mut dyn FnMut(&Arc<Origin>)) {
        f(&self.shared)
    }
}

/// Units that succeed or fail together, in batch order (from [`Pipeline::batch`](crate::Pipeline::batch)).
#[derive(Debug, Clone)]
pub struct Batch<T>(pub Vec<T>);

impl<T: Work> Work for Batch<T> {
    fn for_each_origin(&self, f: &mut dyn FnMut(&Arc<Origin>)) {
        self.0.iter().for_each(|w| w.for_each_origin(f))
    }
}

/// Units that share a grouping key, in batch order (from [`Pipeline::group_by`](crate::Pipeline::group_by)).
#[derive(Debug, Clone)]
pub struct Group<T> {
    /// The grouping key.
    pub key: String,
    /// The members, in batch order.
    pub items: Vec<T>,
}

impl<T: Work> Work for Group<T> {
    fn for_each_origin(&self, f: &mut dyn FnMut(&Arc<Origin>)) {
        self.items.iter().for_each(|w| w.for_each_origin(f))
    }
}

/// The last unit for a key; the earlier ones it supersedes share its outcome
/// (from [`Pipeline::compact`](crate::Pipeline::compact)).
#[derive(Debug, Clone)]
pub struct Compacted<T> {
    /// The last unit for the key, in batch order.
    pub latest: T,
    /// The earlier units for the key; they are not processed, their records end with `latest`.
    pub superseded: Vec<T>,
}

impl<T: Work> Work for Compacted<T> {
    fn for_each_origin(&self, f: &mut dyn FnMut(&Arc<Origin>)) {
        self.superseded.iter().for_each(|w| w.for_each_origin(f));
        self.latest.for_each_origin(f)
    }
}

/// The origins of one item, captured before a step consumes it so its outcome can still be
/// reported. Inline for a single unit: no allocation on the hot path.
pub(crate) type Anchor = smallvec::SmallVec<[Arc<Origin>; 1]>;

pub(crate) fn anchor_of<T: Work>(item: &T) -> Anchor {
    let mut anchor = Anchor::new();
    item.for_each_origin(&mut |o| anchor.push(Arc::clone(o)));
    anchor
}

/// The ordering keys of an item (hashed, deduplicated); empty when none of its units has one.
pub(crate) fn keys_of<T: Work>(item: &T) -> smallvec::SmallVec<[u64; 2]> {
    let mut keys = smallvec::SmallVec::new();
    item.for_each_origin(&mut |o| {
        if let Some(k) = o.key_hash
            && !keys.contains(&k)
        {
            keys.push(k);
        }
    });
    keys
}

/// Lowest record position an item stands for; keeps batch order between stages.
pub(crate) fn first_position<T: Work>(item: &T) -> u32 {
    let mut first = u32::MAX;
    item.for_each_origin(&mut |o| first = first.min(o.index));
    first
}

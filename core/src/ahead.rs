//! A batch's windows, each decoded while the window before it runs.
//!
//! Between two windows nothing is on the wire while the next window's records are parsed and
//! decoded: at `parallel` 8 over a 2 ms sink that was 5–8 % of a Kinesis batch's run. So the
//! records come a chunk at a time, and while a window's calls are out the next window is
//! decoded one chunk per turn of the runtime, between the window's own polls: an answer waits
//! at most one chunk's decode for the thread. It stays on the handler's thread: decoding on
//! another one gave that thread an allocator heap of its own, 20 MB more peak RSS (README,
//! design choices).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use crate::sources::{DecodeOptions, Decoded, Source};

/// The most records decoded in one turn: ~0.5 ms of a Kinesis batch's decode. A window of a
/// size with no divisor from 8 to 32 (499, say) is decoded whole, in one turn.
const CHUNK: usize = 32;

/// The chunk a window of `window` records is cut in: its largest divisor from 8 to 32, so a
/// window keeps its size; the whole window when it has none.
///
/// A 500-record window is decoded 25 records at a time.
pub(crate) fn chunk_of(window: usize) -> usize {
    (8..=CHUNK.min(window))
        .rev()
        .find(|c| window.is_multiple_of(*c))
        .unwrap_or(window.max(1))
}

/// How far a window has come: how many units its pipelines took, and how many of those are
/// over. The next window is decoded once most are, so the two windows' events are in memory
/// together only while the running window's last ones are (decoding from the window's start
/// put 3 MB on a Kinesis batch's peak RSS at `parallel` 8).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    taken: AtomicUsize,
    over: AtomicUsize,
}

impl Progress {
    /// A pipeline took a unit.
    pub(crate) fn took(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// A unit a pipeline took is over there.
    pub(crate) fn over(&self) {
        self.over.fetch_add(1, Ordering::Relaxed);
    }

    /// True when the pipelines have taken units and three in four of them are over (not
    /// while the window is still being prepared: claim checks redeemed, say).
    fn mostly_over(&self) -> bool {
        let taken = self.taken.load(Ordering::Relaxed);
        taken > 0 && 4 * self.over.load(Ordering::Relaxed) >= 3 * taken
    }
}

/// A batch's chunks, grouped back into windows of at most `window` records and decoded ahead.
pub(crate) struct Ahead<'a, S: Source, I> {
    chunks: I,
    window: usize,
    options: &'a DecodeOptions,
    /// The batch position of the next chunk's first record: a decode warning's `position`
    /// counts from it, and the chunk's span says where that is.
    first: usize,
    /// More than one chunk, so each chunk's decode has a span that says where it starts.
    spans: bool,
    /// The window being decoded.
    next: Option<Decoded>,
    /// A chunk decoded that does not fit in the window being decoded: the next one's first.
    spill: Option<Decoded>,
    ended: bool,
    source: std::marker::PhantomData<fn() -> S>,
}

impl<'a, S: Source, I: ExactSizeIterator<Item = S::Event>> Ahead<'a, S, I> {
    /// The windows of `window` records from `chunks`, the batch cut as
    /// [`chunk_of`]`(window)` says.
    pub(crate) fn new(chunks: I, window: usize, options: &'a DecodeOptions) -> Self {
        let spans = chunks.len() > 1;
        Ahead {
            chunks,
            window: window.max(1),
            options,
            first: 0,
            spans,
            next: None,
            spill: None,
            ended: false,
            source: std::marker::PhantomData,
        }
    }

    /// True when records are left after the windows taken so far.
    pub(crate) fn more(&self) -> bool {
        self.next.is_some() || self.spill.is_some() || (!self.ended && self.chunks.len() > 0)
    }

    /// The next window, decoded now as far as it was not decoded ahead.
    pub(crate) fn window(&mut self) -> Option<Decoded> {
        while !self.complete() {
            self.step();
        }
        let window = self.next.take();
        self.next = self.spill.take();
        window
    }

    /// Runs `run` (a window) and, once most of it is over (`progress`), decodes the next
    /// window in the turns it leaves the thread.
    pub(crate) async fn overlap<F: Future>(&mut self, run: F, progress: &Progress) -> F::Output {
        let mut run = pin!(run);
        loop {
            if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
                return out;
            }
            if self.complete() {
                return run.await;
            }
            if progress.mostly_over() {
                self.step();
                // the runtime looks at its I/O and timers before this task runs again, so the
                // window's answers are taken up before the next chunk is decoded
                tokio::task::yield_now().await;
            } else {
                // `run` wakes the task when it has more to do
                let mut waited = false;
                poll_fn(|_| {
                    if std::mem::replace(&mut waited, true) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
        }
    }

    /// True when the window being decoded has all its records.
    fn complete(&self) -> bool {
        self.ended
            || self.spill.is_some()
            || self
                .next
                .as_ref()
                .is_some_and(|d| d.records.len() >= self.window)
    }

    /// Decodes one chunk into the window being decoded, or into the next when it does not fit.
    fn step(&mut self) {
        let Some(chunk) = self.chunks.next() else {
            self.ended = true;
            return;
        };
        let span = self
            .spans
            .then(|| tracing::info_span!("decode", first = self.first).entered());
        let decoded = S::decode(chunk, self.options);
        drop(span);
        self.first += decoded.records.len();
        match &mut self.next {
            None => self.next = Some(decoded),
            Some(next) if next.records.len() + decoded.records.len() <= self.window => {
                next.append(decoded)
            }
            Some(_) => self.spill = Some(decoded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;
    use crate::sources::{self, Kinesis};
    use crate::testing::to_kinesis_records;

    #[test]
    fn a_window_keeps_its_size() {
        assert_eq!(chunk_of(500), 25);
        assert_eq!(chunk_of(1000), 25);
        assert_eq!(chunk_of(64), 32);
        assert_eq!(chunk_of(10), 10);
        assert_eq!(chunk_of(3), 3);
        assert_eq!(chunk_of(0), 1);
        // no divisor from 8 to 32: decoded whole
        assert_eq!(chunk_of(499), 499);
    }

    fn batch(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event::new(format!("e{i}"), "thing-created", i as i64))
            .collect()
    }

    #[test]
    fn chunks_make_the_windows_a_whole_decode_makes() {
        let events = batch(23);
        let whole = sources::from_kinesis(to_kinesis_records(&events));
        let chunks = <Kinesis as Source>::windows(to_kinesis_records(&events).into(), chunk_of(10));
        let options = DecodeOptions::default();
        let mut ahead = Ahead::<Kinesis, _>::new(chunks.into_iter(), 10, &options);
        let mut sizes = Vec::new();
        let mut more = Vec::new();
        let mut unit = 0;
        while let Some(window) = ahead.window() {
            more.push(ahead.more());
            for (i, u) in window.units.iter().enumerate() {
                assert_eq!(u.position(), i, "each window counts positions from 0");
                assert_eq!(u.shared.unit as usize, i);
                assert_eq!(u.event(), whole.units[unit].event());
                unit += 1;
            }
            sizes.push(window.records.len());
        }
        assert_eq!(sizes, [10, 10, 3]);
        assert_eq!(more, [true, true, false]);
        assert_eq!(unit, 23);
    }

    #[test]
    fn a_later_chunk_moves_its_positions_on() {
        let events = batch(12);
        let mut first = sources::from_kinesis(to_kinesis_records(&events[..4]));
        let mut later: sources::KinesisRecords = to_kinesis_records(&events[4..]).into();
        later.records[1] = sources::Lenient::Malformed {
            raw: serde_json::json!({"kinesis": {}}),
            reason: "not a record".into(),
        };
        let later = sources::from_kinesis(later);
        let (failures, units) = (later.failures.len(), later.units.len());
        first.append(later);
        assert_eq!(first.records.len(), 12);
        assert_eq!(first.units.len(), 4 + units);
        assert_eq!(first.failures.len(), failures);
        assert_eq!(
            first.failures[0].0, 5,
            "the malformed record, 2nd of the later chunk"
        );
        for (i, u) in first.units.iter().enumerate() {
            assert_eq!(u.shared.unit as usize, i);
        }
        assert_eq!(first.units[4].position(), 4);
        assert_eq!(first.units[5].position(), 6);
    }
}

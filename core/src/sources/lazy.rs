//! A batch parsed a piece at a time (see [`Source::event_windows`](super::Source::event_windows)).
//!
//! The payload is walked once, each record only skipped over, to find where it starts and ends
//! and whether it may be taken in a window; each piece's records are parsed when its turn
//! comes. So a big batch holds its payload and about one window's records, where a batch parsed
//! whole holds every record's (a Kinesis batch's decoded data alone is more than half its
//! payload).

use std::ops::Range;

use bytes::Bytes;
use serde_json::Value;

use super::{Lenient, REASON_BYTES, Records, Relaxed, each_record, skip};

/// A batch's windows, in order, each parsed when it is taken.
pub type Windows<E> = Box<dyn ExactSizeIterator<Item = E> + Send>;

/// Where the record that starts at `start` of a payload ends and, when it may be taken in a
/// window, where its id is (a JSON string: the id its response would name); `None` when it is
/// not JSON of the shape the probe reads.
pub(crate) type Probe = fn(&[u8], usize) -> Option<(usize, Option<Range<usize>>)>;

impl<R: Relaxed + Send + 'static> Records<R> {
    /// The payload's records in windows of at most `size`, each parsed when taken; one window
    /// when any record may not be taken in a window (`probe`), `None` when the payload is not
    /// of the usual shape (the caller then parses it whole, as it would otherwise).
    pub(crate) fn lazy_windows(
        payload: Bytes,
        size: usize,
        probe: Probe,
    ) -> Option<Windows<Records<R>>> {
        let mut spans: Vec<Range<usize>> = Vec::new();
        let mut windowable = true;
        each_record(&payload, |start| {
            let (end, id) = probe(&payload, start)?;
            windowable &= id.is_some();
            spans.push(start..end);
            Some(end)
        })?;
        let size = if windowable {
            size.max(1)
        } else {
            spans.len().max(1)
        };
        // an empty batch is one empty window, as it is parsed whole
        let left = spans.len().div_ceil(size).max(1);
        Some(Box::new(Lazy {
            payload,
            spans: spans.into_iter(),
            size,
            left,
            probe,
            parsed: std::marker::PhantomData,
        }))
    }
}

/// The windows left of a payload walked once.
///
/// The payload is held until the windows are dropped (the invocation's end), not freed once the
/// last window is parsed: freed while that window runs, its pages went to the window's small
/// allocations, and the next invocation's payload to fresh ones (measured: peak RSS 27 → 54 MB
/// and 35 → 62 ms on the benchmark's production path, with mimalloc keeping freed pages).
struct Lazy<R> {
    payload: Bytes,
    spans: std::vec::IntoIter<Range<usize>>,
    size: usize,
    left: usize,
    /// Finds a record's id again, for one that turns out not to be JSON.
    probe: Probe,
    parsed: std::marker::PhantomData<fn() -> R>,
}

impl<R: Relaxed> Iterator for Lazy<R> {
    type Item = Records<R>;

    fn next(&mut self) -> Option<Records<R>> {
        self.left = self.left.checked_sub(1)?;
        let records = self
            .spans
            .by_ref()
            .take(self.size)
            .map(|span| parse(&self.payload, span, self.probe))
            .collect();
        Some(Records { records })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R: Relaxed> ExactSizeIterator for Lazy<R> {}

/// The record at `span` of the payload, as [`Records::from_bytes`] reads it: in one pass where it
/// parses, else on its own, isolated (see [`Lenient`]).
///
/// A record that is not even JSON (the walk does not check) is isolated too, where a batch
/// parsed whole fails the invocation (Lambda writes its events' JSON, so only a hand-made event
/// has one): its text is kept as a string (`text`), and with it the id the walk found, as
/// `kinesis.sequenceNumber`, so a record let into a window still has the id its retry names.
fn parse<R: Relaxed>(payload: &Bytes, span: Range<usize>, probe: Probe) -> Lenient<R> {
    let bytes = payload.slice(span);
    let not_json = |reason: String| {
        let text = Value::String(String::from_utf8_lossy(&bytes).into_owned());
        let id = probe(&bytes, 0)
            .and_then(|(_, id)| bytes.get(id?))
            .and_then(|id| serde_json::from_slice::<&str>(id).ok());
        Lenient::Malformed {
            raw: match id {
                Some(id) => serde_json::json!({"kinesis": {"sequenceNumber": id}, "text": text}),
                None => text,
            },
            reason: crate::faults::truncate(&reason, REASON_BYTES).to_owned(),
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => return not_json(format!("the record is not UTF-8: {e}")),
    };
    if let Some((record, end)) = R::parse_at(&bytes, text, 0)
        && end == text.len()
    {
        return Lenient::Parsed(record);
    }
    serde_json::from_str(text).unwrap_or_else(|e: serde_json::Error| not_json(e.to_string()))
}

/// A Kinesis record: it may be taken in a window when its `kinesis.sequenceNumber` is a string
/// with no escape (the id a record that does not parse is retried by:
/// [`SourceRecord::item_identifier`](crate::sources::SourceRecord::item_identifier) reads it first) and
/// it has no `attributes` (where an SQS FIFO group is read). A key written with an escape, or
/// one of these twice, stops the walk: the batch is then parsed whole, as before.
pub(crate) fn kinesis(b: &[u8], start: usize) -> Option<(usize, Option<Range<usize>>)> {
    let (mut kinesis, mut sequence, mut attributes) = (false, None::<Option<Range<usize>>>, false);
    let end = skip::object(b, start, |key, at| match key? {
        b"kinesis" if !kinesis => {
            kinesis = true;
            if b.get(at) != Some(&b'{') {
                return skip::value(b, at);
            }
            skip::object(b, at, |key, at| match key? {
                b"sequenceNumber" if sequence.is_none() => {
                    let end = skip::value(b, at)?;
                    let id = b.get(at..end)?;
                    let string = serde_json::from_slice::<&str>(id).is_ok();
                    sequence = Some(string.then_some(at..end));
                    Some(end)
                }
                b"sequenceNumber" => None,
                _ => skip::value(b, at),
            })
        }
        b"attributes" if !attributes => {
            attributes = !b.get(at..)?.starts_with(b"null");
            skip::value(b, at)
        }
        b"kinesis" | b"attributes" => None,
        _ => skip::value(b, at),
    })?;
    Some((end, sequence.flatten().filter(|_| !attributes)))
}

#[cfg(test)]
mod tests {
    use aws_lambda_events::event::kinesis::KinesisEventRecord;

    use super::*;
    use crate::Event;
    use crate::testing::to_kinesis_records;

    fn payload(records: &[&str]) -> Bytes {
        Bytes::from(format!("{{\"Records\": [{}]}}", records.join(",\n ")))
    }

    fn record(seq: &str) -> String {
        format!(
            r#"{{"kinesis":{{"partitionKey":"k","sequenceNumber":{seq},"data":"e30=","approximateArrivalTimestamp":1}},"eventID":"s:1"}}"#
        )
    }

    fn windows(payload: Bytes, size: usize) -> Option<Vec<Vec<Lenient<KinesisEventRecord>>>> {
        let windows = Records::<KinesisEventRecord>::lazy_windows(payload, size, kinesis)?;
        Some(windows.map(|w| w.records).collect())
    }

    #[test]
    fn the_kinesis_probe_passes_a_record_with_a_sequence_number_only() {
        let r = record(r#""49""#);
        let at = r.find(r#""49""#).unwrap();
        assert_eq!(kinesis(r.as_bytes(), 0), Some((r.len(), Some(at..at + 4))));
        // not a string, or one with an escape: no id the probe can vouch for
        for seq in ["null", "49", r#""4\u0039""#] {
            let r = record(seq);
            assert_eq!(kinesis(r.as_bytes(), 0), Some((r.len(), None)), "{seq}");
        }
        let no_seq = r#"{"kinesis":{"data":""}}"#;
        assert_eq!(kinesis(no_seq.as_bytes(), 0), Some((no_seq.len(), None)));
        let fifo = r#"{"kinesis":{"sequenceNumber":"1"},"attributes":{"MessageGroupId":"g"}}"#;
        assert_eq!(kinesis(fifo.as_bytes(), 0), Some((fifo.len(), None)));
        let odd = r#"{"kinesis":5,"attributes":null}"#;
        assert_eq!(kinesis(odd.as_bytes(), 0), Some((odd.len(), None)));
        // what it cannot read, it does not pass: the batch is then parsed whole
        for bad in [
            r#"{"kinesis":{"#,
            "[1]",
            r#"{"kinesis":{},"kinesis":{}}"#,
            r#"{"kinesis":{"sequenceNumber":"1","sequenceNumber":"2"}}"#,
            r#"{"kinesi\u0073":{}}"#,
        ] {
            assert_eq!(kinesis(bad.as_bytes(), 0), None, "{bad}");
        }
    }

    #[test]
    fn each_window_holds_the_records_a_whole_parse_gives() {
        let events: Vec<Event> = (0..7).map(|i| Event::new(i.to_string(), "t", 1)).collect();
        let bytes = Bytes::from(serde_json::to_vec(&to_kinesis_records(&events)).unwrap());
        let whole = Records::<KinesisEventRecord>::from_bytes(&bytes)
            .unwrap()
            .records;
        let windows = windows(bytes, 3).unwrap();
        let sizes: Vec<usize> = windows.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let lazy: Vec<_> = windows.into_iter().flatten().collect();
        assert_eq!(lazy.len(), whole.len());
        for (a, b) in lazy.iter().zip(&whole) {
            match (a, b) {
                (Lenient::Parsed(a), Lenient::Parsed(b)) => assert_eq!(a, b),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_record_that_does_not_parse_is_isolated_in_its_window() {
        let bad = r#"{"kinesis":{"sequenceNumber":"2","data":"%%%"},"eventID":"s:2"}"#;
        let (one, three) = (record(r#""1""#), record(r#""3""#));
        let windows = windows(payload(&[&one, bad, &three]), 2).unwrap();
        assert_eq!(windows.len(), 2);
        assert!(matches!(windows[0][0], Lenient::Parsed(_)));
        match &windows[0][1] {
            Lenient::Malformed { raw, reason } => {
                assert_eq!(raw["eventID"], "s:2");
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(windows[1][0], Lenient::Parsed(_)));
    }

    #[test]
    fn a_record_that_is_not_json_is_isolated_with_its_text() {
        let bad = r#"{"kinesis":{"sequenceNumber":"2","data":tru},"eventID":"s:2"}"#;
        let one = record(r#""1""#);
        let windows = windows(payload(&[&one, bad]), 1).unwrap();
        assert_eq!(windows.len(), 2);
        match &windows[1][0] {
            Lenient::Malformed { raw, reason } => {
                // its text, and the id its retry would name
                assert_eq!(raw["text"], bad);
                assert_eq!(raw["kinesis"]["sequenceNumber"], "2");
                let record = crate::sources::SourceRecord::Raw(raw.clone());
                assert_eq!(record.item_identifier(), Some("2"));
                assert!(reason.contains("expected"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_record_that_may_not_be_windowed_keeps_the_batch_whole() {
        let records: Vec<String> = (0..5).map(|i| record(&format!("\"{i}\""))).collect();
        let mut refs: Vec<&str> = records.iter().map(String::as_str).collect();
        let no_seq = r#"{"kinesis":{"data":"e30="}}"#;
        refs.push(no_seq);
        let windows = windows(payload(&refs), 2).unwrap();
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].len(), 6);
    }

    #[test]
    fn an_empty_batch_is_one_empty_window_and_another_shape_is_none() {
        let windows = windows(Bytes::from_static(b" {\"Records\": [ ]} "), 2).unwrap();
        assert_eq!(windows.len(), 1);
        assert!(windows[0].is_empty());
        for other in [
            &br#"{"Records":[{"kinesis":{}}],"x":1}"#[..],
            br#"{"x":1,"Records":[]}"#,
            br#"{"Records":[{"kinesis":{}}"#,
        ] {
            assert!(
                super::super::Records::<KinesisEventRecord>::lazy_windows(
                    Bytes::copy_from_slice(other),
                    2,
                    kinesis
                )
                .is_none()
            );
        }
    }
}

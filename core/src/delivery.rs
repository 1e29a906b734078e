//! What Lambda delivers again after an invocation, and what that means for fault events: the
//! policy behind the partial batch response, pure and apart from any I/O.
//!
//! - Kinesis and DynamoDB redeliver every record from the lowest reported sequence number on;
//!   SQS redelivers each reported message; SNS, S3, EventBridge (schedules and alarms too) and
//!   Firehose redeliver the whole event when the invocation fails. A retry record with no id to report fails the whole batch.
//! - SQS FIFO: once a message of a group is retry, every later message of the group is retry
//!   too, whatever happened to it, so the group keeps its order.
//! - A fault whose records Lambda will deliver again is not published now (it would be raised
//!   again on redelivery): it is deferred as a whole, its records all retry. Deferring can move
//!   a stream's checkpoint earlier, so the rule is applied until nothing changes.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use crate::outcome::Outcome;
use crate::record::SourceRecord;

/// How a source redelivers what is not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Kinesis, DynamoDB: every record from the reported sequence number on.
    FromCheckpoint,
    /// SQS: each reported message.
    PerRecord,
    /// SNS, S3, EventBridge, schedules, alarms, Firehose: the whole event, when the
    /// invocation fails.
    Whole,
}

/// Sequence numbers are decimal strings of up to 128 digits: compare by length, then text.
pub(crate) fn cmp_sequence(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The retry record a stream checkpoints at: the one with the lowest sequence number, as
/// `(position, sequence)`; `Err(position)` when a retry record has no sequence number.
pub(crate) fn checkpoint<'a>(
    outcomes: &[Outcome],
    records: &'a [Arc<SourceRecord>],
) -> Result<Option<(usize, &'a str)>, usize> {
    let mut lowest: Option<(usize, &str)> = None;
    for (i, _) in outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| **o == Outcome::Retry)
    {
        let id = records[i].item_identifier().ok_or(i)?;
        if lowest.is_none_or(|(_, l)| cmp_sequence(id, l) == Ordering::Less) {
            lowest = Some((i, id));
        }
    }
    Ok(lowest)
}

/// Which records Lambda will deliver again, given every record's outcome.
pub(crate) fn redelivered(
    outcomes: &[Outcome],
    records: &[Arc<SourceRecord>],
    redelivery: Redelivery,
) -> Vec<bool> {
    let any_retry = outcomes.contains(&Outcome::Retry);
    let all = |v: bool| vec![v; outcomes.len()];
    if !any_retry {
        return all(false);
    }
    match redelivery {
        Redelivery::Whole => all(true),
        Redelivery::PerRecord => {
            let retry = |i: usize| outcomes[i] == Outcome::Retry;
            if (0..outcomes.len()).any(|i| retry(i) && records[i].item_identifier().is_none()) {
                return all(true);
            }
            (0..outcomes.len()).map(retry).collect()
        }
        Redelivery::FromCheckpoint => match checkpoint(outcomes, records) {
            Err(_) => all(true),
            Ok(None) => all(false),
            Ok(Some((at, seq))) => records
                .iter()
                .enumerate()
                .map(|(i, r)| match r.item_identifier() {
                    Some(id) => cmp_sequence(id, seq) != Ordering::Less,
                    None => i >= at,
                })
                .collect(),
        },
    }
}

/// SQS FIFO: after the first retry of a message group, every later message of it is retry.
pub(crate) fn hold_fifo_groups(outcomes: &mut [Outcome], records: &[Arc<SourceRecord>]) {
    let mut held: HashMap<&str, ()> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        let Some(group) = record.message_group() else {
            continue;
        };
        if held.contains_key(group) {
            outcomes[i] = Outcome::Retry;
        } else if outcomes[i] == Outcome::Retry {
            held.insert(group, ());
        }
    }
}

/// Settles which faults wait for redelivery: every fault with a record Lambda delivers again is
/// deferred whole (all its records retry), until nothing changes. Returns, per fault, whether
/// it is deferred; `outcomes` end as Lambda is to be told.
pub(crate) fn defer_faults(
    outcomes: &mut [Outcome],
    records: &[Arc<SourceRecord>],
    redelivery: Redelivery,
    faults: &[&[u32]],
) -> Vec<bool> {
    let mut deferred = vec![false; faults.len()];
    loop {
        if redelivery == Redelivery::PerRecord {
            hold_fifo_groups(outcomes, records);
        }
        let again = redelivered(outcomes, records, redelivery);
        let mut changed = false;
        for (i, positions) in faults.iter().enumerate() {
            if deferred[i] || !positions.iter().any(|p| again[*p as usize]) {
                continue;
            }
            deferred[i] = true;
            changed = true;
            for p in *positions {
                outcomes[*p as usize] = Outcome::Retry;
            }
        }
        if !changed {
            return deferred;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{to_kinesis_records, to_sqs_fifo_records};
    use crate::{Event, sources};
    use Outcome::*;

    fn kinesis(n: usize) -> Vec<Arc<SourceRecord>> {
        let events: Vec<Event> = (0..n)
            .map(|i| Event::new(format!("e{i}"), "t", 1))
            .collect();
        sources::from_kinesis(to_kinesis_records(&events)).records
    }

    #[test]
    fn a_stream_redelivers_from_the_lowest_retry_sequence_on() {
        let records = kinesis(4);
        let again = redelivered(
            &[Done, Retry, Faulted, Done],
            &records,
            Redelivery::FromCheckpoint,
        );
        assert_eq!(again, [false, true, true, true]);
        assert_eq!(
            redelivered(&[Done; 4], &records, Redelivery::FromCheckpoint),
            [false; 4]
        );
    }

    #[test]
    fn a_fault_spanning_the_checkpoint_is_deferred_whole_and_moves_it() {
        let records = kinesis(4);
        // a batch fault over records 0 and 2, record 1 retry: publishing it now would fault
        // record 2 again on redelivery
        let mut outcomes = [Faulted, Retry, Faulted, Done];
        let batch_fault: &[u32] = &[0, 2];
        let deferred = defer_faults(
            &mut outcomes,
            &records,
            Redelivery::FromCheckpoint,
            &[batch_fault],
        );
        assert_eq!(deferred, [true]);
        assert_eq!(outcomes, [Retry, Retry, Retry, Done]);
    }

    #[test]
    fn a_fault_before_the_checkpoint_is_published() {
        let records = kinesis(3);
        let mut outcomes = [Faulted, Retry, Faulted];
        let (first, last): (&[u32], &[u32]) = (&[0], &[2]);
        let deferred = defer_faults(
            &mut outcomes,
            &records,
            Redelivery::FromCheckpoint,
            &[first, last],
        );
        assert_eq!(deferred, [false, true]);
        assert_eq!(outcomes, [Faulted, Retry, Retry]);
    }

    #[test]
    fn fifo_holds_the_rest_of_a_group_after_its_first_retry() {
        let events = [
            ("g1", Event::new("a", "t", 1)),
            ("g2", Event::new("b", "t", 1)),
            ("g1", Event::new("c", "t", 1)),
            ("g1", Event::new("d", "t", 1)),
            ("g2", Event::new("e", "t", 1)),
        ];
        let records = sources::from_sqs(to_sqs_fifo_records(&events)).records;
        let mut outcomes = [Done, Done, Retry, Faulted, Done];
        let fault: &[u32] = &[3];
        let deferred = defer_faults(&mut outcomes, &records, Redelivery::PerRecord, &[fault]);
        assert_eq!(outcomes, [Done, Done, Retry, Retry, Done]);
        assert_eq!(deferred, [true]);
    }
}

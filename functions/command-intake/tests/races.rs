//! Racing for a stream's next sequence and repeated request ids, with the cancellation reasons
//! DynamoDB answers a cancelled transaction with (aws-smithy-mocks).

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput;
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::types::error::TransactionCanceledException;
use aws_sdk_dynamodb::types::{AttributeValue, CancellationReason, KeysAndAttributes};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use command_intake::{Intake, validate};

fn item(sequence: u64) -> GetItemOutput {
    GetItemOutput::builder()
        .item("sequence", AttributeValue::N(sequence.to_string()))
        .build()
}

fn cancelled(marker: &str, stream: &str) -> TransactWriteItemsError {
    let reason = |code: &str| CancellationReason::builder().code(code).build();
    TransactWriteItemsError::TransactionCanceledException(
        TransactionCanceledException::builder()
            .cancellation_reasons(reason(marker))
            .cancellation_reasons(reason(stream))
            .message("Transaction cancelled")
            .build(),
    )
}

fn reads_marker(req: &aws_sdk_dynamodb::operation::get_item::GetItemInput) -> bool {
    req.key()
        .and_then(|k| k.get("pk"))
        .and_then(|pk| pk.as_s().ok())
        .is_some_and(|pk| pk.starts_with("request#"))
}

fn row(pk: &str, sk: &str, sequence: u64) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk.into())),
        ("sk".to_owned(), AttributeValue::S(sk.into())),
        (
            "sequence".to_owned(),
            AttributeValue::N(sequence.to_string()),
        ),
    ])
}

/// The first read: the marker (if the request was seen) and the stream's head, in one batch.
fn both(marker: Option<u64>, stream: Option<u64>) -> BatchGetItemOutput {
    let items: Vec<_> = marker
        .map(|m| row("request#r-9", "request", m))
        .into_iter()
        .chain(stream.map(|s| row("thing", "stream", s)))
        .collect();
    BatchGetItemOutput::builder()
        .responses("commands", items)
        .build()
}

fn command() -> command_intake::Command {
    validate(br#"{"type":"thing","command":"create-thing","requestId":"r-9"}"#).unwrap()
}

#[tokio::test]
async fn losing_the_race_for_a_sequence_reads_again_and_takes_the_next() {
    // another writer took 4 between our read of 3 and our transaction
    let first = mock!(aws_sdk_dynamodb::Client::batch_get_item).then_output(|| both(None, Some(3)));
    let reads = mock!(aws_sdk_dynamodb::Client::get_item)
        .match_requests(|r| !reads_marker(r))
        .then_output(|| item(4));
    let writes = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .sequence()
        .error(|| cancelled("None", "ConditionalCheckFailed"))
        .output(|| TransactWriteItemsOutput::builder().build())
        .build();
    let client = mock_client!(
        aws_sdk_dynamodb,
        RuleMode::MatchAny,
        [&first, &reads, &writes]
    );
    let accepted = Intake::new(client, "commands")
        .submit(&command())
        .await
        .unwrap();
    assert_eq!((accepted.sequence, accepted.duplicate), (5, false));
    assert_eq!(
        (first.num_calls(), reads.num_calls(), writes.num_calls()),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn a_repeated_request_id_answers_its_first_sequence_without_writing() {
    // the marker says this request got 6 (the stream, read with it, is at 7)
    let marker =
        mock!(aws_sdk_dynamodb::Client::batch_get_item).then_output(|| both(Some(6), Some(7)));
    let writes = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&marker, &writes]);
    let accepted = Intake::new(client, "commands")
        .submit(&command())
        .await
        .unwrap();
    assert_eq!((accepted.sequence, accepted.duplicate), (6, true));
    assert_eq!(
        (marker.num_calls(), writes.num_calls()),
        (1, 0),
        "no write attempted"
    );
}

#[tokio::test]
async fn a_repeat_racing_its_first_request_is_caught_by_the_transaction() {
    // no marker yet when we look; the first request's transaction lands before ours
    let stream =
        mock!(aws_sdk_dynamodb::Client::batch_get_item).then_output(|| both(None, Some(5)));
    let marker = mock!(aws_sdk_dynamodb::Client::get_item)
        .match_requests(reads_marker)
        .then_output(|| item(6));
    let writes = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .then_error(|| cancelled("ConditionalCheckFailed", "ConditionalCheckFailed"));
    let client = mock_client!(
        aws_sdk_dynamodb,
        RuleMode::MatchAny,
        [&marker, &stream, &writes]
    );
    let accepted = Intake::new(client, "commands")
        .submit(&command())
        .await
        .unwrap();
    assert_eq!((accepted.sequence, accepted.duplicate), (6, true));
    assert_eq!(writes.num_calls(), 1);
}

#[tokio::test]
async fn a_stream_that_stays_contended_is_unavailable_not_an_error() {
    let first = mock!(aws_sdk_dynamodb::Client::batch_get_item).then_output(|| both(None, Some(1)));
    let reads = mock!(aws_sdk_dynamodb::Client::get_item)
        .match_requests(|r| !reads_marker(r))
        .then_output(|| item(1));
    let writes = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .then_error(|| cancelled("None", "ConditionalCheckFailed"));
    let client = mock_client!(
        aws_sdk_dynamodb,
        RuleMode::MatchAny,
        [&first, &reads, &writes]
    );
    let err = Intake::new(client, "commands")
        .submit(&command())
        .await
        .unwrap_err();
    assert!(
        matches!(err, command_intake::SubmitError::Unavailable(ref m) if m.contains("busy")),
        "{err:?}"
    );
    assert_eq!(writes.num_calls(), 12, "bounded attempts");
}

#[tokio::test]
async fn keys_the_batch_read_leaves_unprocessed_are_read_again() {
    // throttled: the stream's head comes back unprocessed the first time
    let unprocessed = || {
        let keys = KeysAndAttributes::builder()
            .keys(HashMap::from([
                ("pk".to_owned(), AttributeValue::S("thing".into())),
                ("sk".to_owned(), AttributeValue::S("stream".into())),
            ]))
            .consistent_read(true)
            .build()
            .unwrap();
        BatchGetItemOutput::builder()
            .responses("commands", Vec::new())
            .unprocessed_keys("commands", keys)
            .build()
    };
    let reads = mock!(aws_sdk_dynamodb::Client::batch_get_item)
        .sequence()
        .output(unprocessed)
        .output(|| both(None, Some(3)))
        .build();
    let writes = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&reads, &writes]);
    let accepted = Intake::new(client, "commands")
        .submit(&command())
        .await
        .unwrap();
    assert_eq!((accepted.sequence, accepted.duplicate), (4, false));
    assert_eq!((reads.num_calls(), writes.num_calls()), (2, 1));
}

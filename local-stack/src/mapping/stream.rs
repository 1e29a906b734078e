//! Kinesis and DynamoDB stream mappings: one poller per shard, in order, checkpointing as
//! Lambda does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodbstreams::types::ShardIteratorType as DdbIterator;
use aws_sdk_kinesis::types::ShardIteratorType as KinesisIterator;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::records::{dynamodb_record, dynamodb_sequence, kinesis_filter_view, kinesis_record};
use super::{Activity, reported_failures, retry_delay};
use crate::Error;
use crate::runtime::Invoke;
use crate::spec::{StreamKind, StreamMapping};

/// The clients a stream mapping needs.
#[derive(Clone)]
pub struct StreamClients {
    /// Reads Kinesis shards.
    pub kinesis: aws_sdk_kinesis::Client,
    /// Reads DynamoDB streams.
    pub streams: aws_sdk_dynamodbstreams::Client,
    /// Sends on-failure records.
    pub sqs: aws_sdk_sqs::Client,
}

/// One stream mapping of one function.
pub struct StreamPoller {
    /// The mapping, from the template.
    pub mapping: StreamMapping,
    /// The function it invokes.
    pub function: Arc<dyn Invoke>,
    /// Its clients.
    pub clients: StreamClients,
    /// Where it counts what it does.
    pub activity: Arc<Activity>,
    /// The region in records.
    pub region: String,
}

struct Rec {
    seq: String,
    arrival: f64,
    record: Value,
}

enum Reader {
    Kinesis {
        client: aws_sdk_kinesis::Client,
        iterator: Option<String>,
    },
    Dynamo {
        client: aws_sdk_dynamodbstreams::Client,
        iterator: Option<String>,
    },
}

/// Where a new iterator starts: the mapping's starting position, or after the last record read.
type After<'a> = Option<&'a str>;

enum Verdict {
    Done,
    RetryFrom(usize),
    FunctionError(String),
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn stream_name(arn: &str) -> &str {
    arn.rsplit_once("stream/").map_or(arn, |(_, n)| n)
}

impl StreamPoller {
    fn key(&self) -> String {
        format!("{}/{}", self.function.name(), self.mapping.id)
    }

    /// Polls every shard until `stop` turns true.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> Result<(), Error> {
        let shards = self.shards().await?;
        let mut tasks = Vec::new();
        for shard in shards {
            let me = Arc::clone(&self);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = me.shard(&shard, stop).await {
                    tracing::error!(mapping = %me.key(), shard = %shard, error = %e, "shard poller stopped");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    }

    async fn shards(&self) -> Result<Vec<String>, Error> {
        let arn = &self.mapping.arn;
        Ok(match self.mapping.kind {
            StreamKind::Kinesis => self
                .clients
                .kinesis
                .list_shards()
                .stream_name(stream_name(arn))
                .send()
                .await
                .map_err(Error::aws)?
                .shards()
                .iter()
                .map(|s| s.shard_id().to_owned())
                .collect(),
            StreamKind::DynamoDb => self
                .clients
                .streams
                .describe_stream()
                .stream_arn(arn)
                .send()
                .await
                .map_err(Error::aws)?
                .stream_description()
                .map(|d| {
                    d.shards()
                        .iter()
                        .filter_map(|s| s.shard_id().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    async fn reader(&self, shard: &str, after: After<'_>) -> Result<Reader, Error> {
        let arn = &self.mapping.arn;
        Ok(match self.mapping.kind {
            StreamKind::Kinesis => {
                let kind = if self.mapping.trim_horizon {
                    KinesisIterator::TrimHorizon
                } else {
                    KinesisIterator::Latest
                };
                let kind = if after.is_some() {
                    KinesisIterator::AfterSequenceNumber
                } else {
                    kind
                };
                let it = self
                    .clients
                    .kinesis
                    .get_shard_iterator()
                    .stream_name(stream_name(arn))
                    .shard_id(shard)
                    .shard_iterator_type(kind)
                    .set_starting_sequence_number(after.map(str::to_owned))
                    .send()
                    .await
                    .map_err(Error::aws)?;
                Reader::Kinesis {
                    client: self.clients.kinesis.clone(),
                    iterator: it.shard_iterator().map(str::to_owned),
                }
            }
            StreamKind::DynamoDb => {
                let kind = if self.mapping.trim_horizon {
                    DdbIterator::TrimHorizon
                } else {
                    DdbIterator::Latest
                };
                let kind = if after.is_some() {
                    DdbIterator::AfterSequenceNumber
                } else {
                    kind
                };
                let it = self
                    .clients
                    .streams
                    .get_shard_iterator()
                    .stream_arn(arn)
                    .shard_id(shard)
                    .shard_iterator_type(kind)
                    .set_sequence_number(after.map(str::to_owned))
                    .send()
                    .await
                    .map_err(Error::aws)?;
                Reader::Dynamo {
                    client: self.clients.streams.clone(),
                    iterator: it.shard_iterator().map(str::to_owned),
                }
            }
        })
    }

    /// Reads the next records; `None` when the shard is closed.
    async fn read(
        &self,
        reader: &mut Reader,
        shard: &str,
        last: &mut Option<String>,
    ) -> Result<Option<Vec<Rec>>, Error> {
        let arn = &self.mapping.arn;
        match reader {
            Reader::Kinesis { client, iterator } => {
                let Some(it) = iterator.take() else {
                    return Ok(None);
                };
                let out = client
                    .get_records()
                    .shard_iterator(it)
                    .send()
                    .await
                    .map_err(Error::aws)?;
                *iterator = out.next_shard_iterator().map(str::to_owned);
                if let Some(r) = out.records().last() {
                    *last = Some(r.sequence_number().to_owned());
                }
                Ok(Some(
                    out.records()
                        .iter()
                        .filter(|r| self.keep(&kinesis_filter_view(r)))
                        .map(|r| Rec {
                            seq: r.sequence_number().to_owned(),
                            arrival: r
                                .approximate_arrival_timestamp()
                                .map_or(now_secs(), |t| t.as_secs_f64()),
                            record: kinesis_record(r, shard, arn, &self.region),
                        })
                        .collect(),
                ))
            }
            Reader::Dynamo { client, iterator } => {
                let Some(it) = iterator.take() else {
                    return Ok(None);
                };
                let out = client
                    .get_records()
                    .shard_iterator(it)
                    .send()
                    .await
                    .map_err(Error::aws)?;
                *iterator = out.next_shard_iterator().map(str::to_owned);
                if let Some(r) = out.records().last() {
                    *last = Some(dynamodb_sequence(r));
                }
                let mut recs = Vec::new();
                for r in out.records() {
                    let record = dynamodb_record(r, arn, &self.region);
                    if self.keep(&record) {
                        recs.push(Rec {
                            seq: dynamodb_sequence(r),
                            arrival: record["dynamodb"]["ApproximateCreationDateTime"]
                                .as_f64()
                                .unwrap_or_else(now_secs),
                            record,
                        });
                    }
                }
                Ok(Some(recs))
            }
        }
    }

    fn keep(&self, view: &Value) -> bool {
        let keep =
            self.mapping.filters.is_empty() || self.mapping.filters.iter().any(|f| f.matches(view));
        if !keep {
            self.activity.update(&self.key(), |c| {
                c.filtered += 1;
                c.finished += 1;
            });
        }
        keep
    }

    async fn shard(&self, shard: &str, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
        let key = self.key();
        let mut reader = self.reader(shard, None).await?;
        // the sequence number of the last record read (delivered or filtered out)
        let mut last: Option<String> = None;
        let mut buffer: VecDeque<Rec> = VecDeque::new();
        let mut closed = false;
        let mut limit = self.mapping.batch_size;
        let mut attempts = 0u32;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            // gather a batch: up to batch_size records, or what arrived within the window
            let gather_until = Instant::now() + self.mapping.window;
            while !closed && buffer.len() < self.mapping.batch_size {
                match self.read(&mut reader, shard, &mut last).await {
                    Ok(Some(recs)) => {
                        let empty = recs.is_empty();
                        buffer.extend(recs);
                        if !empty {
                            continue;
                        }
                        if self.mapping.kind == StreamKind::DynamoDb {
                            // moto replaces a table's stream shard when a transaction is
                            // cancelled, stranding open iterators; a fresh one after the last
                            // record read costs one call and sees the live shard
                            reader = self.reader(shard, last.as_deref()).await?;
                        }
                    }
                    Ok(None) => closed = true,
                    Err(e) => {
                        tracing::warn!(mapping = %key, error = %e, "GetRecords failed; retrying");
                        reader = self.reader(shard, last.as_deref()).await?;
                    }
                }
                if !buffer.is_empty() && Instant::now() >= gather_until {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
            if buffer.is_empty() {
                if closed {
                    tracing::info!(mapping = %key, shard, "shard closed; its poller ends");
                    return Ok(());
                }
                continue;
            }
            if let Some(max_age) = self.mapping.max_age {
                let oldest_allowed = now_secs() - max_age.as_secs_f64();
                let expired = buffer
                    .iter()
                    .take_while(|r| r.arrival < oldest_allowed)
                    .count();
                if expired > 0 {
                    self.give_up(shard, &buffer, expired, attempts, "RecordAgeExceeded")
                        .await;
                    buffer.drain(..expired);
                    continue;
                }
            }
            let n = limit.min(buffer.len());
            let payload =
                json!({"Records": buffer.iter().take(n).map(|r| &r.record).collect::<Vec<_>>()});
            let payload = Bytes::from(serde_json::to_vec(&payload)?);
            tracing::trace!(mapping = %key, payload = %String::from_utf8_lossy(&payload), "invoking");
            self.activity.update(&key, |c| {
                c.invocations += 1;
                c.delivered += n as u64;
            });
            let answer = self.function.invoke(payload).await;
            tracing::debug!(mapping = %key, records = n, ?answer, "invoked");
            let verdict = match answer {
                Err(e) => Verdict::FunctionError(e.to_string()),
                Ok(_) if !self.mapping.report_failures => Verdict::Done,
                Ok(body) => match reported_failures(&body) {
                    None => Verdict::Done,
                    Some(ids) if ids.is_empty() => Verdict::Done,
                    Some(ids) => {
                        let positions: Option<Vec<usize>> = ids
                            .iter()
                            .map(|id| {
                                let id = id.as_deref()?;
                                buffer.iter().take(n).position(|r| r.seq == id)
                            })
                            .collect();
                        // an identifier that names no record of the batch fails it all
                        Verdict::RetryFrom(positions.and_then(|p| p.into_iter().min()).unwrap_or(0))
                    }
                },
            };
            let failing = match verdict {
                Verdict::Done => {
                    buffer.drain(..n);
                    self.activity.update(&key, |c| c.finished += n as u64);
                    attempts = 0;
                    limit = self.mapping.batch_size;
                    continue;
                }
                Verdict::RetryFrom(i) => {
                    buffer.drain(..i);
                    self.activity.update(&key, |c| {
                        c.finished += i as u64;
                        c.retried += 1;
                    });
                    if i > 0 {
                        attempts = 0;
                    }
                    tracing::info!(mapping = %key, from = %buffer[0].seq, "partial batch failure; resuming at the first reported record");
                    n - i
                }
                Verdict::FunctionError(e) => {
                    self.activity.update(&key, |c| c.retried += 1);
                    if self.mapping.bisect && n > 1 {
                        limit = n.div_ceil(2);
                        tracing::info!(mapping = %key, error = %e, size = limit, "function error; bisecting the batch");
                        continue;
                    }
                    tracing::info!(mapping = %key, error = %e, "function error; retrying the batch");
                    n
                }
            };
            attempts += 1;
            if self.mapping.max_retries.is_some_and(|max| attempts > max) {
                self.give_up(shard, &buffer, failing, attempts, "RetryAttemptsExhausted")
                    .await;
                buffer.drain(..failing);
                attempts = 0;
                limit = self.mapping.batch_size;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(retry_delay(attempts)) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Describes the first `count` records of `buffer` on the on-failure destination.
    async fn give_up(
        &self,
        shard: &str,
        buffer: &VecDeque<Rec>,
        count: usize,
        attempts: u32,
        condition: &str,
    ) {
        let key = self.key();
        self.activity.update(&key, |c| {
            c.given_up += count as u64;
            c.finished += count as u64;
        });
        let (Some(first), Some(last)) = (buffer.front(), buffer.get(count.saturating_sub(1)))
        else {
            return;
        };
        let info = json!({
            "shardId": shard,
            "startSequenceNumber": first.seq,
            "endSequenceNumber": last.seq,
            "approximateArrivalOfFirstRecord": chrono::DateTime::from_timestamp_millis((first.arrival * 1000.0) as i64).map(|t| t.to_rfc3339()),
            "approximateArrivalOfLastRecord": chrono::DateTime::from_timestamp_millis((last.arrival * 1000.0) as i64).map(|t| t.to_rfc3339()),
            "batchSize": count,
            "streamArn": self.mapping.arn,
        });
        let info_key = match self.mapping.kind {
            StreamKind::Kinesis => "KinesisBatchInfo",
            StreamKind::DynamoDb => "DDBStreamBatchInfo",
        };
        let record = json!({
            "requestContext": {
                "requestId": uuid::Uuid::new_v4().to_string(),
                "functionArn": self.function.arn(),
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": chrono::Utc::now().to_rfc3339(),
            info_key: info,
        });
        tracing::warn!(mapping = %key, condition, records = count, "giving up on records");
        let Some(destination) = &self.mapping.on_failure else {
            return;
        };
        if let Err(e) = send_to_queue_arn(&self.clients.sqs, destination, &record.to_string()).await
        {
            tracing::error!(mapping = %key, error = %e, "cannot send the on-failure record");
        }
    }
}

/// Sends `body` to the SQS queue with this ARN.
pub async fn send_to_queue_arn(
    sqs: &aws_sdk_sqs::Client,
    arn: &str,
    body: &str,
) -> Result<(), Error> {
    sqs.send_message()
        .queue_url(super::queue_url(sqs, arn).await?)
        .message_body(body)
        .send()
        .await
        .map_err(Error::aws)?;
    Ok(())
}

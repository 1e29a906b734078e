//! Kinesis and DynamoDB stream mappings: one reader per shard, its records split by partition
//! key hash into `ParallelizationFactor` lanes that deliver concurrently, each in order, and a
//! checkpoint per shard at the lowest unfinished record, as Lambda does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodbstreams::types::ShardIteratorType as DdbIterator;
use aws_sdk_kinesis::types::ShardIteratorType as KinesisIterator;
use bytes::Bytes;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::Activity;
use super::checkpoint::Checkpoint;
use super::control::MappingControl;
use super::policy::{self, Answer, Condition, Failed, Next, Rules, Settle, Shard};
use super::records::{
    dynamodb_key, dynamodb_record, dynamodb_sequence, kinesis_filter_view, kinesis_record,
};
use crate::Error;
use crate::chaos::{Chaos, Kind};
use crate::destination::send_to_queue_arn;
use crate::invoke::Invoke;
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
    /// With chaos: records that succeeded are sometimes delivered again.
    pub chaos: Option<Arc<Chaos>>,
    /// Switched off, or its batch size changed, through the Lambda API.
    pub control: Arc<MappingControl>,
}

struct Rec {
    seq: String,
    /// The partition key (Kinesis) or the item's keys (DynamoDB): what picks the lane.
    key: String,
    /// Its place on the shard's [`Checkpoint`].
    index: u64,
    arrival: f64,
    record: Value,
}

/// Chunks (one per `GetRecords`) a lane may hold unread before the shard's reader waits.
const LANE_CHUNKS: usize = 16;

/// The lane (0 to `factor` − 1) of a record's partition key: a stable hash, so one key's
/// records always share a lane.
///
/// ```
/// use local_stack::mapping::stream::lane;
/// assert_eq!(lane("thing-1", 10), lane("thing-1", 10));
/// assert!(lane("thing-1", 10) < 10);
/// assert_eq!(lane("anything", 1), 0);
/// ```
pub fn lane(key: &str, factor: usize) -> usize {
    // FNV-1a: stable across runs and builds, unlike std's randomly keyed hasher
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % factor.max(1) as u64) as usize
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

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn stream_name(arn: &str) -> &str {
    arn.rsplit_once("stream/").map_or(arn, |(_, n)| n)
}

/// The shards of a Kinesis stream or DynamoDB stream, by ARN.
pub async fn shard_ids(
    clients: &StreamClients,
    kind: StreamKind,
    arn: &str,
) -> Result<Vec<String>, Error> {
    Ok(match kind {
        StreamKind::Kinesis => clients
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
        StreamKind::DynamoDb => clients
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
        shard_ids(&self.clients, self.mapping.kind, &self.mapping.arn).await
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
                            key: r.partition_key().unwrap_or_default().to_owned(),
                            index: 0,
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
                            key: dynamodb_key(&record["dynamodb"]["Keys"]),
                            index: 0,
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

    /// Reads one shard and hands its records to `ParallelizationFactor` lanes by partition key
    /// hash; each lane delivers its records in order, one batch at a time, so a key's records
    /// are never in two batches at once, and a retry holds only its own lane.
    async fn shard(&self, shard: &str, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
        let key = self.key();
        let factor = self.mapping.parallelization.clamp(1, 10);
        let checkpoint = Arc::new(Mutex::new(Checkpoint::default()));
        let mut senders = Vec::with_capacity(factor);
        let mut lanes = Vec::with_capacity(factor);
        for _ in 0..factor {
            let (tx, rx) = mpsc::channel::<Vec<Rec>>(LANE_CHUNKS);
            senders.push(tx);
            lanes.push(self.lane(shard, rx, Arc::clone(&checkpoint), stop.clone()));
        }
        // owns the senders: when it ends, a closed shard's lanes deliver what they hold, then end
        let read = async move {
            let mut reader = self.reader(shard, None).await?;
            // the sequence number of the last record read (delivered or filtered out)
            let mut last: Option<String> = None;
            loop {
                if !self.control.ready(&mut stop).await {
                    return Ok(());
                }
                match self.read(&mut reader, shard, &mut last).await {
                    Ok(Some(recs)) if !recs.is_empty() => {
                        let mut chunks: Vec<Vec<Rec>> = (0..factor).map(|_| Vec::new()).collect();
                        {
                            let mut c = checkpoint.lock().unwrap_or_else(|p| p.into_inner());
                            for mut r in recs {
                                r.index = c.read(&r.seq);
                                chunks[lane(&r.key, factor)].push(r);
                            }
                        }
                        for (tx, chunk) in senders.iter().zip(chunks) {
                            if chunk.is_empty() {
                                continue;
                            }
                            tokio::select! {
                                sent = tx.send(chunk) => if sent.is_err() { return Ok(()) },
                                _ = stop.changed() => return Ok(()),
                            }
                        }
                        continue;
                    }
                    Ok(Some(_)) => {
                        if self.mapping.kind == StreamKind::DynamoDb {
                            // moto replaces a table's stream shard when a transaction is
                            // cancelled, stranding open iterators; a fresh one after the last
                            // record read costs one call and sees the live shard
                            reader = self.reader(shard, last.as_deref()).await?;
                        }
                    }
                    Ok(None) => {
                        tracing::info!(mapping = %key, shard, "shard closed; its poller ends once its records are delivered");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(mapping = %key, error = %e, "GetRecords failed; retrying");
                        reader = self.reader(shard, last.as_deref()).await?;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        };
        let (read, lanes): (Result<(), Error>, _) =
            tokio::join!(read, futures::future::join_all(lanes));
        read?;
        lanes.into_iter().collect()
    }

    /// One lane of a shard: gathers its records into batches and delivers them in order, with
    /// Lambda's retry, bisect and give-up rules; marks each record finished on the checkpoint.
    async fn lane(
        &self,
        shard: &str,
        mut records: mpsc::Receiver<Vec<Rec>>,
        checkpoint: Arc<Mutex<Checkpoint>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let key = self.key();
        let mut buffer: VecDeque<Rec> = VecDeque::new();
        let mut closed = false;
        let mut state = Shard::new(Rules {
            batch_size: self.mapping.batch_size,
            bisect: self.mapping.bisect,
            max_retries: self.mapping.max_retries,
            max_age: self.mapping.max_age,
        });
        let finish = |buffer: &mut VecDeque<Rec>, n: usize| {
            let mut c = checkpoint.lock().unwrap_or_else(|p| p.into_inner());
            for r in buffer.drain(..n) {
                c.finish(r.index);
            }
            let position = c.position().map(str::to_owned);
            drop(c);
            if let Some(position) = position {
                self.activity.update(&key, |counters| {
                    counters.checkpoints.insert(shard.to_owned(), position);
                });
            }
        };
        loop {
            if !self.control.ready(&mut stop).await {
                return Ok(());
            }
            let batch_size = self.control.batch_size();
            // gather a batch: up to batch_size records, or what arrived within the window
            let gather_until = Instant::now() + self.mapping.window;
            loop {
                while let Ok(chunk) = records.try_recv() {
                    buffer.extend(chunk);
                }
                let now = Instant::now();
                if buffer.len() >= batch_size || (!buffer.is_empty() && now >= gather_until) {
                    break;
                }
                if closed {
                    if buffer.is_empty() {
                        return Ok(());
                    }
                    break;
                }
                let wait = if buffer.is_empty() {
                    Duration::from_millis(200)
                } else {
                    gather_until - now
                };
                tokio::select! {
                    chunk = records.recv() => match chunk {
                        Some(chunk) => buffer.extend(chunk),
                        None => closed = true,
                    },
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
            let arrivals: Vec<f64> = buffer.iter().map(|r| r.arrival).collect();
            let n = match state.next(&arrivals, now_secs()) {
                Next::GiveUp {
                    count,
                    condition,
                    attempts,
                } => {
                    self.give_up(shard, &buffer, count, attempts, condition.as_str())
                        .await;
                    finish(&mut buffer, count);
                    state.gave_up();
                    continue;
                }
                Next::Invoke { count } => count.min(batch_size),
            };
            let payload =
                json!({"Records": buffer.iter().take(n).map(|r| &r.record).collect::<Vec<_>>()});
            let payload = Bytes::from(serde_json::to_vec(&payload)?);
            tracing::trace!(mapping = %key, payload = %String::from_utf8_lossy(&payload), "invoking");
            let age_ms = ((now_secs() - arrivals[0]).max(0.0) * 1000.0) as u64;
            self.activity.update(&key, |c| {
                c.invocations += 1;
                c.delivered += n as u64;
                c.max_iterator_age_ms = c.max_iterator_age_ms.max(age_ms);
            });
            let answer = self.function.invoke(payload).await;
            tracing::debug!(mapping = %key, records = n, ?answer, "invoked");
            let ids: Vec<&str> = buffer.iter().take(n).map(|r| r.seq.as_str()).collect();
            let failed = match &answer {
                Ok(body) => {
                    policy::failed(&ids, self.mapping.report_failures, &Answer::Response(body))
                }
                Err(_) => Failed::All,
            };
            match state.settle(n, &failed, answer.is_err()) {
                Settle::Advance { done } => {
                    // chaos: as after a partial batch response, the records from a point
                    // inside the batch come again although they succeeded
                    let done = match self.chaos.as_ref().filter(|c| done > 1 && c.roll()) {
                        Some(chaos) => {
                            let from = chaos.with_rng(|r| r.random_range(1..done));
                            chaos.count(
                                &format!("mapping {key}"),
                                Kind::Redelivered,
                                (done - from) as u64,
                            );
                            from
                        }
                        None => done,
                    };
                    finish(&mut buffer, done);
                    self.activity.update(&key, |c| c.finished += done as u64);
                }
                Settle::Bisect => {
                    self.activity.update(&key, |c| c.retried += 1);
                    tracing::info!(mapping = %key, "function error; bisecting the batch");
                }
                Settle::Retry { done, delay } => {
                    finish(&mut buffer, done);
                    self.activity.update(&key, |c| {
                        c.finished += done as u64;
                        c.retried += 1;
                    });
                    tracing::info!(mapping = %key, from = %buffer[0].seq, ?delay, "batch failed; retrying from the first failed record");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                }
                Settle::GiveUp {
                    done,
                    count,
                    attempts,
                } => {
                    finish(&mut buffer, done);
                    self.activity.update(&key, |c| {
                        c.finished += done as u64;
                        c.retried += 1;
                    });
                    self.give_up(
                        shard,
                        &buffer,
                        count,
                        attempts,
                        Condition::RetryAttemptsExhausted.as_str(),
                    )
                    .await;
                    finish(&mut buffer, count);
                }
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

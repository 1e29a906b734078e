//! The functions a template declares, with their event sources, resolved against [`Names`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::Error;
use crate::pattern::Pattern;
use crate::template::{ACCOUNT, Names, Template};

/// A function as the local stack runs it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The template's logical id.
    pub logical_id: String,
    /// The function's name (`FunctionName`, else `<stack>-<logical id>`).
    pub name: String,
    /// Its ARN.
    pub arn: String,
    /// The cargo binary (`Metadata.BuildProperties.Binary`).
    pub binary: String,
    /// The invocation timeout.
    pub timeout: Duration,
    /// Memory in MB (passed to the runtime as Lambda does).
    pub memory: u32,
    /// Environment: `Globals.Function.Environment` merged with the function's own.
    pub environment: BTreeMap<String, String>,
    /// Its event sources.
    pub events: Vec<EventSource>,
    /// Retries of a failed asynchronous invocation (`EventInvokeConfig`, default 2).
    pub async_retries: u32,
    /// Where a failed asynchronous invocation goes (DLQ or on-failure destination ARN).
    pub async_failure: Option<String>,
    /// `ReservedConcurrentExecutions`: the most instances it runs at once, if set.
    pub reserved_concurrency: Option<usize>,
}

/// Which service a stream mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A Kinesis data stream.
    Kinesis,
    /// A DynamoDB stream.
    DynamoDb,
}

/// A Kinesis or DynamoDB stream event source mapping.
#[derive(Debug, Clone)]
pub struct StreamMapping {
    /// The event's name in the template.
    pub id: String,
    /// Kinesis or DynamoDB.
    pub kind: StreamKind,
    /// The stream's ARN.
    pub arn: String,
    /// `TRIM_HORIZON` (else `LATEST`).
    pub trim_horizon: bool,
    /// Most records per invocation.
    pub batch_size: usize,
    /// How long to gather records before invoking with fewer than `batch_size`.
    pub window: Duration,
    /// `FunctionResponseTypes: [ReportBatchItemFailures]`.
    pub report_failures: bool,
    /// Retries before giving up on a batch (`None`: until the records expire).
    pub max_retries: Option<u32>,
    /// Records older than this are given up on.
    pub max_age: Option<Duration>,
    /// Split a failing batch in two.
    pub bisect: bool,
    /// Where given-up batches are described (an SQS queue ARN).
    pub on_failure: Option<String>,
    /// Event filters; a record is delivered if any matches (all when empty).
    pub filters: Vec<Pattern>,
    /// `ParallelizationFactor`: concurrent batches per shard (1–10).
    pub parallelization: usize,
}

/// An SQS event source mapping.
#[derive(Debug, Clone)]
pub struct QueueMapping {
    /// The event's name in the template.
    pub id: String,
    /// The queue's ARN.
    pub arn: String,
    /// Most messages per invocation.
    pub batch_size: usize,
    /// `FunctionResponseTypes: [ReportBatchItemFailures]`.
    pub report_failures: bool,
    /// Event filters; messages that match none are deleted unseen, as Lambda does.
    pub filters: Vec<Pattern>,
    /// `ScalingConfig.MaximumConcurrency` (2–1000): the most batches in flight at once
    /// (`None`: [`crate::scaling::QUEUE_CONCURRENCY`], the pollers Lambda starts with).
    pub max_concurrency: Option<usize>,
    /// `MaximumBatchingWindowInSeconds`: how long to gather messages before invoking with
    /// fewer than `batch_size`.
    pub window: Duration,
}

/// One of a function's event sources.
#[derive(Debug, Clone)]
pub enum EventSource {
    /// Kinesis or DynamoDB stream.
    Stream(StreamMapping),
    /// SQS queue.
    Queue(QueueMapping),
    /// An HTTP API route (`HttpApi` or `Api`).
    Http {
        /// Upper-case method, or `ANY`.
        method: String,
        /// Path with `{param}` segments.
        path: String,
    },
    /// An EventBridge rule targeting the function (`EventBridgeRule` / `CloudWatchEvent`).
    Rule {
        /// The event's name in the template.
        id: String,
        /// The bus's name.
        bus: String,
        /// The rule's event pattern.
        pattern: Value,
    },
}

fn u64_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// SQS's default `VisibilityTimeout`.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

/// A queue mapping's visibility timeout against its function's timeout, when the queue is in the
/// template. Lambda refuses a mapping whose queue hides a message for less time than the
/// function may run (the message would come back while its first invocation still holds it),
/// so this is an error here too. Below six times the timeout plus the batching window (AWS's
/// advice, room for the retries of throttled invocations) it is a warning: messages may be
/// received again, and counted against `maxReceiveCount`, while a batch is still running.
fn check_visibility(
    template: &Template,
    function: &str,
    queue: Option<&Value>,
    timeout: Duration,
    window: Duration,
) -> Result<(), Error> {
    let Some(queue_id) = queue.and_then(Names::get_att_resource) else {
        return Ok(());
    };
    let Some(resource) = template.resource(queue_id) else {
        return Ok(());
    };
    let visibility = u64_of(resource.properties.get("VisibilityTimeout"))
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(DEFAULT_VISIBILITY);
    if visibility < timeout {
        return Err(Error::Template(format!(
            "{function}: queue {queue_id}'s VisibilityTimeout ({}s) is less than the function's \
             Timeout ({}s); Lambda refuses this event source mapping",
            visibility.as_secs(),
            timeout.as_secs()
        )));
    }
    let advised = timeout * 6 + window;
    if visibility < advised {
        tracing::warn!(
            function,
            queue = queue_id,
            visibility_s = visibility.as_secs(),
            advised_s = advised.as_secs(),
            "the queue's VisibilityTimeout is under six times the function's Timeout plus its \
             batching window: a message may be received again while its batch still runs"
        );
    }
    Ok(())
}

/// `FunctionResponseTypes: [ReportBatchItemFailures]`.
fn reports_failures(props: &Value) -> bool {
    props
        .get("FunctionResponseTypes")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|t| t == "ReportBatchItemFailures"))
}

fn filters(names: &Names, props: &Value) -> Result<Vec<Pattern>, Error> {
    let mut out = Vec::new();
    if let Some(list) = props
        .pointer("/FilterCriteria/Filters")
        .and_then(Value::as_array)
    {
        for f in list {
            let text = names.string(f.get("Pattern").unwrap_or(&Value::Null))?;
            out.push(Pattern::parse(&text)?);
        }
    }
    Ok(out)
}

impl FunctionSpec {
    /// Every `AWS::Serverless::Function` of the template, resolved.
    pub fn all(template: &Template, names: &Names) -> Result<Vec<Self>, Error> {
        template
            .of_kind("AWS::Serverless::Function")
            .map(|(id, r)| Self::from_resource(template, names, id, &r.properties, &r.metadata))
            .collect()
    }

    fn from_resource(
        template: &Template,
        names: &Names,
        id: &str,
        props: &Value,
        metadata: &Value,
    ) -> Result<Self, Error> {
        let globals = &template.function_globals;
        let name = match props.get("FunctionName") {
            Some(v) => names.string(v)?,
            None => format!("{}-{id}", names.stack()),
        };
        let binary = metadata
            .pointer("/BuildProperties/Binary")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Template(format!(
                    "{id}: Metadata.BuildProperties.Binary (the cargo binary) is missing"
                ))
            })?
            .to_owned();
        let setting = |key: &str| props.get(key).or_else(|| globals.get(key));
        let timeout = u64_of(setting("Timeout")).unwrap_or(3).max(1) as u64;
        let memory = u64_of(setting("MemorySize")).unwrap_or(128) as u32;
        let mut environment = BTreeMap::new();
        for source in [globals, props] {
            if let Some(vars) = source
                .pointer("/Environment/Variables")
                .and_then(Value::as_object)
            {
                for (k, v) in vars {
                    environment.insert(k.clone(), names.string(v)?);
                }
            }
        }
        let async_retries = u64_of(props.pointer("/EventInvokeConfig/MaximumRetryAttempts"))
            .unwrap_or(2)
            .clamp(0, 2) as u32;
        let async_failure = match props
            .pointer("/DeadLetterQueue/TargetArn")
            .or_else(|| props.pointer("/EventInvokeConfig/DestinationConfig/OnFailure/Destination"))
        {
            Some(v) => Some(names.string(v)?),
            None => None,
        };
        let mut events = Vec::new();
        if let Some(map) = props.get("Events").and_then(Value::as_object) {
            for (event_id, e) in map {
                let kind = e.get("Type").and_then(Value::as_str).unwrap_or_default();
                let p = e.get("Properties").cloned().unwrap_or(Value::Null);
                if p.get("Enabled").and_then(Value::as_bool) == Some(false) {
                    continue;
                }
                events.push(match kind {
                    "Kinesis" | "DynamoDB" => {
                        let stream_kind = if kind == "Kinesis" {
                            StreamKind::Kinesis
                        } else {
                            StreamKind::DynamoDb
                        };
                        EventSource::Stream(StreamMapping {
                            id: event_id.clone(),
                            kind: stream_kind,
                            arn: names.string(p.get("Stream").unwrap_or(&Value::Null))?,
                            trim_horizon: p.get("StartingPosition").and_then(Value::as_str)
                                == Some("TRIM_HORIZON"),
                            batch_size: u64_of(p.get("BatchSize")).unwrap_or(100).max(1) as usize,
                            window: Duration::from_secs(
                                u64_of(p.get("MaximumBatchingWindowInSeconds"))
                                    .unwrap_or(0)
                                    .max(0) as u64,
                            ),
                            report_failures: reports_failures(&p),
                            max_retries: u64_of(p.get("MaximumRetryAttempts"))
                                .filter(|n| *n >= 0)
                                .map(|n| n as u32),
                            max_age: u64_of(p.get("MaximumRecordAgeInSeconds"))
                                .filter(|n| *n >= 0)
                                .map(|n| Duration::from_secs(n as u64)),
                            bisect: p.get("BisectBatchOnFunctionError").and_then(Value::as_bool)
                                == Some(true),
                            on_failure: match p.pointer("/DestinationConfig/OnFailure/Destination")
                            {
                                Some(v) => Some(names.string(v)?),
                                None => None,
                            },
                            filters: filters(names, &p)?,
                            parallelization: u64_of(p.get("ParallelizationFactor"))
                                .unwrap_or(1)
                                .clamp(1, 10) as usize,
                        })
                    }
                    "SQS" => {
                        let window = u64_of(p.get("MaximumBatchingWindowInSeconds"))
                            .unwrap_or(0)
                            .clamp(0, 300) as u64;
                        // more than 10 messages a batch needs a batching window, as on Lambda
                        let most = if window > 0 { 10_000 } else { 10 };
                        check_visibility(
                            template,
                            id,
                            p.get("Queue"),
                            Duration::from_secs(timeout),
                            Duration::from_secs(window),
                        )?;
                        EventSource::Queue(QueueMapping {
                            id: event_id.clone(),
                            arn: names.string(p.get("Queue").unwrap_or(&Value::Null))?,
                            batch_size: u64_of(p.get("BatchSize")).unwrap_or(10).clamp(1, most)
                                as usize,
                            report_failures: reports_failures(&p),
                            filters: filters(names, &p)?,
                            max_concurrency: u64_of(p.pointer("/ScalingConfig/MaximumConcurrency"))
                                .map(|n| n.clamp(2, 1000) as usize),
                            window: Duration::from_secs(window),
                        })
                    }
                    "HttpApi" | "Api" => EventSource::Http {
                        method: p
                            .get("Method")
                            .and_then(Value::as_str)
                            .unwrap_or("ANY")
                            .to_ascii_uppercase(),
                        path: p
                            .get("Path")
                            .and_then(Value::as_str)
                            .unwrap_or("/")
                            .to_owned(),
                    },
                    "EventBridgeRule" | "CloudWatchEvent" => EventSource::Rule {
                        id: event_id.clone(),
                        bus: match p.get("EventBusName") {
                            Some(v) => names.string(v)?,
                            None => "default".to_owned(),
                        },
                        pattern: names.resolve(p.get("Pattern").unwrap_or(&Value::Null))?,
                    },
                    other => {
                        tracing::warn!(
                            function = id,
                            event = event_id,
                            kind = other,
                            "event source type not emulated locally; skipped"
                        );
                        continue;
                    }
                });
            }
        }
        Ok(Self {
            logical_id: id.to_owned(),
            arn: format!(
                "arn:aws:lambda:{}:{ACCOUNT}:function:{name}",
                names.region()
            ),
            name,
            binary,
            timeout: Duration::from_secs(timeout),
            memory,
            environment,
            events,
            async_retries,
            async_failure,
            reserved_concurrency: u64_of(setting("ReservedConcurrentExecutions"))
                .map(|n| n.max(0) as usize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(visibility: Option<u64>) -> Template {
        let visibility = visibility
            .map(|v| format!("VisibilityTimeout: {v}"))
            .unwrap_or_default();
        Template::parse(&format!(
            r#"
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      {visibility}
  Fn:
    Type: AWS::Serverless::Function
    Metadata:
      BuildProperties: {{Binary: fn}}
    Properties:
      Timeout: 60
      Events:
        Q:
          Type: SQS
          Properties:
            Queue: !GetAtt Queue.Arn
"#
        ))
        .unwrap()
    }

    fn functions(t: &Template) -> Result<Vec<FunctionSpec>, Error> {
        let mut names = Names::new(t, "s", "us-east-1");
        names.set_attr("Queue", "Arn", "arn:aws:sqs:us-east-1:000000000000:q");
        FunctionSpec::all(t, &names)
    }

    #[test]
    fn a_queue_hiding_messages_for_less_than_the_function_timeout_is_refused_as_lambda_does() {
        let err = functions(&template(Some(30))).unwrap_err().to_string();
        assert!(err.contains("VisibilityTimeout (30s)"), "{err}");
        assert!(err.contains("Timeout (60s)"), "{err}");
        // SQS's default of 30 s is too short for a 60 s function as well
        assert!(functions(&template(None)).is_err());
        // at or above the timeout it runs (under 6× it only warns)
        assert_eq!(functions(&template(Some(60))).unwrap()[0].events.len(), 1);
        assert_eq!(functions(&template(Some(360))).unwrap()[0].events.len(), 1);
    }
}

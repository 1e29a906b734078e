//! Errors: what a pipeline step returns, and how the engine classifies it.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// How a failed unit of work ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad data, a failed validation or a bug in a mapping: retrying cannot help, so the unit is
    /// set aside as a fault event and the batch goes on.
    Poison,
    /// Throttling, a 5xx, a timeout: the unit is retried in the invocation where the step asks
    /// for it, then reported for redelivery (partial batch response).
    Transient,
}

/// The error a pipeline step returns. It carries its [`ErrorClass`] and a name that lands in the
/// fault event's `err.name`.
///
/// ```
/// use lambda_stream::{ErrorClass, StepError};
///
/// let e = StepError::poison_msg("thing.id is missing");
/// assert_eq!(e.class(), ErrorClass::Poison);
/// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out");
/// assert_eq!(StepError::transient(io).class(), ErrorClass::Transient);
/// // serde errors are bad data, so poison
/// let bad: Result<u8, _> = serde_json::from_str("x");
/// assert_eq!(StepError::from(bad.unwrap_err()).class(), ErrorClass::Poison);
/// ```
#[derive(Debug)]
pub struct StepError {
    class: ErrorClass,
    name: Cow<'static, str>,
    source: Box<dyn StdError + Send + Sync>,
}

impl StepError {
    /// A poison error wrapping `source`.
    pub fn poison(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Poison, "PoisonError", source)
    }

    /// A poison error with just a message.
    pub fn poison_msg(message: impl Into<String>) -> Self {
        Self::poison(message.into())
    }

    /// A transient error wrapping `source`.
    pub fn transient(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Transient, "TransientError", source)
    }

    /// An error of the given class and name.
    pub fn new(
        class: ErrorClass,
        name: impl Into<Cow<'static, str>>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        StepError {
            class,
            name: name.into(),
            source: source.into(),
        }
    }

    /// Renames the error (the fault event's `err.name`), builder style.
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Poison or transient.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The error's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The causes, outermost first, one per line, each cut to 500 bytes as the display's
    /// message is (a fault event's `err.stack`).
    ///
    /// ```
    /// use lambda_stream::StepError;
    ///
    /// let e = StepError::poison_msg(format!("bad id {}", "x".repeat(10_000)));
    /// assert!(e.chain().len() < 600);
    /// ```
    pub fn chain(&self) -> String {
        let mut out = String::new();
        let _ = write_cut(&mut out, &self.source.to_string());
        let mut cause = self.source.source();
        while let Some(c) = cause {
            out.push_str("\ncaused by: ");
            let _ = write_cut(&mut out, &c.to_string());
            cause = c.source();
        }
        out
    }
}

/// The most of its message a [`StepError`] displays, in bytes. A message can quote untrusted
/// input (an event id, a value that failed validation), and the display is what logs and fault
/// events carry.
pub(crate) const MESSAGE_BYTES: usize = 500;

/// Displays as `name: message`, the message cut to 500 bytes (saying how long it was).
///
/// ```
/// use lambda_stream::StepError;
///
/// let e = StepError::poison_msg("thing.id is missing");
/// assert_eq!(e.to_string(), "PoisonError: thing.id is missing");
/// let long = StepError::poison_msg(format!("bad id {}", "x".repeat(10_000)));
/// assert!(long.to_string().len() < 600);
/// ```
impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        write_cut(f, &self.source.to_string())
    }
}

/// Writes `text`, cut to [`MESSAGE_BYTES`] and saying how long it was when cut.
fn write_cut(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    let shown = crate::faults::truncate(text, MESSAGE_BYTES);
    out.write_str(shown)?;
    if shown.len() < text.len() {
        write!(out, "… ({} bytes)", text.len())?;
    }
    Ok(())
}

impl StdError for StepError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

impl From<serde_json::Error> for StepError {
    fn from(e: serde_json::Error) -> Self {
        StepError::poison(e)
    }
}

impl From<serde_dynamo::Error> for StepError {
    fn from(e: serde_dynamo::Error) -> Self {
        StepError::poison(e)
    }
}

/// Why a record could not be turned into a unit of work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {record}: {reason}")]
pub struct DecodeError {
    /// The record's id (event id, message id or position) so it can be found.
    pub record: String,
    /// What is wrong with it.
    pub reason: String,
    /// The fault's `err.name`: `DecodeError`, or the cause's own name when the record was read
    /// but what it points to could not be had (a claim check, a KMS data key).
    pub name: String,
}

/// The batch cannot be answered with a partial batch response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A record must be retried but has no id the response could name, so the whole batch is
    /// failed and Lambda delivers it again.
    #[error(
        "record at position {0} must be retried but has no id to report; failing the whole batch"
    )]
    Unidentifiable(usize),
    /// The source has no partial batch response (SNS, S3, EventBridge): any retry fails the
    /// invocation so Lambda's asynchronous retry delivers it again.
    #[error("{0} record(s) must be retried; failing the invocation so it is delivered again")]
    Retry(usize),
    /// The invocation's payload does not parse as the source's event (the reason cut to 300
    /// bytes): the invocation fails, as the Lambda runtime's own parse would fail it. (A
    /// record of a Kinesis batch taken in windows that is not JSON fails only itself: see
    /// [`Source::event_windows`](crate::sources::Source::event_windows).)
    #[error("the invocation's payload does not parse: {0}")]
    Payload(String),
    /// The invocation began with no more time than the deadline margin, so nothing could ever
    /// start: a configuration error (the margin against the function's timeout), reported
    /// rather than retrying every record in silence.
    #[error(
        "the invocation had {remaining_ms} ms, no more than the deadline margin of {margin_ms} ms (DEADLINE_MARGIN_MS): nothing can start; lower the margin or raise the function's timeout"
    )]
    NoTime {
        /// Time the invocation had when it began.
        remaining_ms: u64,
        /// The handler's deadline margin.
        margin_ms: u64,
    },
}

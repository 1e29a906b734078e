//! Deadline awareness: stop starting work before Lambda's timeout.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The moment after which a pipeline starts no new work: the invocation's deadline less a
/// margin kept for publishing faults and answering. Units not started by then are retried.
///
/// ```
/// use std::time::Duration;
/// use lambda_stream::Deadline;
///
/// let d = Deadline::after(Duration::from_secs(10), Duration::from_secs(1));
/// assert!(!d.passed());
/// assert!(Deadline::after(Duration::from_millis(500), Duration::from_secs(1)).passed());
/// assert!(!Deadline::none().passed());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    stop_at: Option<Instant>,
}

impl Deadline {
    /// No deadline (tests, replays).
    pub fn none() -> Self {
        Deadline { stop_at: None }
    }

    /// Stop `margin` before `remaining` from now.
    pub fn after(remaining: Duration, margin: Duration) -> Self {
        Deadline {
            stop_at: Some(Instant::now() + remaining.saturating_sub(margin)),
        }
    }

    /// From a Lambda context's deadline (epoch ms); a context without one gives no deadline.
    ///
    /// Local runtimes (`cargo lambda watch`) send the timeout itself (say 600000) instead of an
    /// epoch time; a value that small cannot be an epoch deadline (it would be 1970), so it is
    /// read as the time remaining.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut ctx = lambda_runtime::Context::default();
    /// ctx.deadline = 600_000; // what cargo lambda watch sends
    /// let d = lambda_stream::Deadline::from_context(&ctx, Duration::from_secs(1));
    /// assert!(d.remaining().unwrap() > Duration::from_secs(590));
    /// ```
    pub fn from_context(ctx: &lambda_runtime::Context, margin: Duration) -> Self {
        const EARLIEST_EPOCH_DEADLINE_MS: u64 = 1_000_000_000_000; // 2001-09-09
        let remaining = match ctx.deadline {
            0 => return Deadline::none(),
            relative if relative < EARLIEST_EPOCH_DEADLINE_MS => Duration::from_millis(relative),
            _ => ctx
                .deadline()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        };
        tracing::debug!(
            deadline_ms = ctx.deadline,
            remaining_ms = remaining.as_millis() as u64,
            "invocation deadline"
        );
        Deadline::after(remaining, margin)
    }

    /// True once no new work may start.
    pub fn passed(&self) -> bool {
        self.stop_at.is_some_and(|at| Instant::now() >= at)
    }

    /// Time left before no new work may start; `None` when there is no deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.stop_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

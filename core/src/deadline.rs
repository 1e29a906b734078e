//! Deadline awareness: what may start, run and be published before Lambda's timeout.
//!
//! An invocation's deadline `D` and the handler's margin `M` give three moments:
//!
//! | moment | what happens |
//! |---|---|
//! | `D - M` ([`Deadline::passed`]) | nothing new starts: no step, no rate-limit wait, no retry sleep; what has not started is retry |
//! | `D - M/2` ([`Deadline::cut_at`]) | steps still running are abandoned; their units are retry |
//! | `D - M/10` ([`Deadline::publish_by`]) | fault publishing must be over; what is not confirmed is retry |
//!
//! So the invocation always answers before Lambda kills it, with every record's outcome known.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

tokio::task_local! {
    /// The time no retry sleep may pass, for the work running in this task.
    static SLEEP_LIMIT: Instant;
}

/// When to stop starting work, when to abandon running work and when fault publishing must end:
/// the invocation's deadline less a margin (see the [module docs](self)).
///
/// ```
/// use std::time::Duration;
/// use lambda_stream::deadline::Deadline;
///
/// let d = Deadline::after(Duration::from_secs(10), Duration::from_secs(1));
/// assert!(!d.passed());
/// assert!(Deadline::after(Duration::from_millis(500), Duration::from_secs(1)).passed());
/// assert!(!Deadline::none().passed());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    phases: Option<Phases>,
}

#[derive(Debug, Clone, Copy)]
struct Phases {
    start_by: Instant,
    cut_at: Instant,
    publish_by: Instant,
    remaining: Duration,
    margin: Duration,
}

impl Deadline {
    /// No deadline (tests, replays).
    pub fn none() -> Self {
        Deadline { phases: None }
    }

    /// The deadline `remaining` from now, with `margin` kept back.
    pub fn after(remaining: Duration, margin: Duration) -> Self {
        let end = Instant::now() + remaining;
        let before = |d: Duration| end.checked_sub(d).unwrap_or_else(Instant::now);
        Deadline {
            phases: Some(Phases {
                start_by: before(margin),
                cut_at: before(margin / 2),
                publish_by: before(margin / 10),
                remaining,
                margin,
            }),
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
    /// let d = lambda_stream::deadline::Deadline::from_context(&ctx, Duration::from_secs(1));
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
        self.phases.is_some_and(|p| Instant::now() >= p.start_by)
    }

    /// Time left before no new work may start; `None` when there is no deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.phases
            .map(|p| p.start_by.saturating_duration_since(Instant::now()))
    }

    /// The moment no new work may start.
    pub fn start_by(&self) -> Option<Instant> {
        self.phases.map(|p| p.start_by)
    }

    /// The moment running steps are abandoned (half the margin before the deadline).
    pub fn cut_at(&self) -> Option<Instant> {
        self.phases.map(|p| p.cut_at)
    }

    /// The moment fault publishing must be over (a tenth of the margin before the deadline).
    pub fn publish_by(&self) -> Option<Instant> {
        self.phases.map(|p| p.publish_by)
    }

    /// The time the invocation had when the deadline was read, and the margin, when the margin
    /// leaves no time to start anything.
    pub fn no_room(&self) -> Option<(Duration, Duration)> {
        self.phases
            .filter(|p| p.remaining <= p.margin)
            .map(|p| (p.remaining, p.margin))
    }
}

/// Runs `fut` with retry sleeps bounded by `limit` (see [`sleep_for_retry`]).
pub(crate) async fn bounded<F: Future>(limit: Option<Instant>, fut: F) -> F::Output {
    match limit {
        Some(limit) => SLEEP_LIMIT.scope(limit, fut).await,
        None => fut.await,
    }
}

/// Sleeps `delay` before a retry, unless the sleep would end past the moment the current
/// invocation stops starting work; returns whether it slept (false: give up retrying now).
///
/// The connectors' retry loops use it, and so can a step's own.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// // outside a handler there is no deadline: it sleeps
/// assert!(lambda_stream::deadline::sleep_for_retry(Duration::from_millis(1)).await);
/// # });
/// ```
pub async fn sleep_for_retry(delay: Duration) -> bool {
    let limit = SLEEP_LIMIT.try_with(|l| *l).ok();
    if limit.is_some_and(|limit| Instant::now() + delay >= limit) {
        return false;
    }
    tokio::time::sleep(delay).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_margin_splits_into_stop_starting_cut_and_publish() {
        let d = Deadline::after(Duration::from_secs(10), Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(d.start_by(), Some(now + Duration::from_millis(9000)));
        assert_eq!(d.cut_at(), Some(now + Duration::from_millis(9500)));
        assert_eq!(d.publish_by(), Some(now + Duration::from_millis(9900)));
        assert!(d.no_room().is_none());
        let tight = Deadline::after(Duration::from_millis(900), Duration::from_secs(1));
        assert_eq!(
            tight.no_room(),
            Some((Duration::from_millis(900), Duration::from_secs(1)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_sleeps_never_pass_the_limit() {
        let limit = Instant::now() + Duration::from_millis(100);
        let slept = bounded(Some(limit), async {
            (
                sleep_for_retry(Duration::from_millis(60)).await,
                sleep_for_retry(Duration::from_millis(60)).await,
            )
        })
        .await;
        assert_eq!(slept, (true, false));
    }
}

//! Rate limits that know the deadline: a call waits for its turn only when the turn comes
//! before the invocation stops starting work.
//!
//! governor does the bookkeeping (GCRA); its clock here is tokio's, so waits follow tokio's
//! time (and tests can pause it), and the wait itself is a tokio sleep.

use std::num::NonZeroU32;
use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::deadline::Deadline;

/// Nanoseconds since the limiter's clock started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(u64);

impl Add<Nanos> for Tick {
    type Output = Tick;
    fn add(self, other: Nanos) -> Tick {
        Tick(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        Tick(self.0.saturating_sub(duration.as_u64()))
    }
}

/// tokio's clock, for governor.
#[derive(Debug, Clone)]
pub(crate) struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Tick;
    fn now(&self) -> Tick {
        Tick(self.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64)
    }
}

/// At most `n` calls per period, shared by the async steps after
/// [`Pipeline::rate_limit`](crate::Pipeline::rate_limit).
pub(crate) struct Limiter {
    clock: TokioClock,
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Tick>>,
}

impl Limiter {
    /// `n` calls per `per`, in a burst of up to `n`; `None` when `n` is 0 (no limit).
    pub(crate) fn new(n: u32, per: Duration) -> Option<Self> {
        let burst = NonZeroU32::new(n)?;
        let quota = Quota::with_period(per / burst.get())?.allow_burst(burst);
        let clock = TokioClock {
            start: Instant::now(),
        };
        Some(Limiter {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        })
    }

    /// Waits for a turn; false, without waiting, when the turn would come after `deadline`
    /// stops starting work.
    pub(crate) async fn acquire(&self, deadline: &Deadline) -> bool {
        loop {
            if deadline.passed() {
                return false;
            }
            let wait = match self.limiter.check() {
                Ok(()) => return true,
                Err(not_until) => not_until.wait_time_from(self.clock.now()),
            };
            if deadline.remaining().is_some_and(|left| left <= wait) {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn turns_come_at_the_quota_and_never_after_the_deadline() {
        let limiter = Limiter::new(1, Duration::from_millis(700)).unwrap();
        let deadline = Deadline::after(Duration::from_millis(1300), Duration::from_millis(1000));
        let start = Instant::now();
        assert!(limiter.acquire(&deadline).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // the next turn is at 700 ms, past the 300 ms mark: no wait at all
        assert!(!limiter.acquire(&deadline).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // without a deadline it waits its turn
        assert!(limiter.acquire(&Deadline::none()).await);
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }
}

//! In-invocation retries of transient errors.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How [`Pipeline::then_retry`](crate::Pipeline::then_retry) retries a transient error before the
/// unit is sent back for redelivery: exponential backoff with jitter, never sleeping past the
/// deadline.
///
/// ```
/// use std::time::Duration;
/// use lambda_stream::Retry;
///
/// let r = Retry { attempts: 5, ..Retry::default() };
/// assert_eq!(r.min_delay, Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Total attempts, the first included (default 3).
    pub attempts: usize,
    /// First delay (default 50 ms).
    pub min_delay: Duration,
    /// Longest delay (default 2 s).
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 3,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl Retry {
    /// The delays between attempts: exponential, with jitter, `attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter()
            .build()
    }
}

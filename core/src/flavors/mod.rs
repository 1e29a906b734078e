//! Flavors: pipelines assembled from a rule's fields. Add them to a handler with
//! [`HandlerBuilder::pipelines`](crate::HandlerBuilder::pipelines).

mod cdc;
mod circuit_breaker;
mod materialize;

pub use cdc::{Cdc, Target};
pub use circuit_breaker::{ALARM_STATE_CHANGE, CircuitBreakerRule, SCHEDULED_EVENT};
pub use materialize::Materialize;

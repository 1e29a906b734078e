//! Flavors: pipelines assembled from a rule's fields. Add them to a handler with
//! [`HandlerBuilder::pipelines`](crate::HandlerBuilder::pipelines).

mod cdc;
mod materialize;

pub use cdc::{Cdc, Target};
pub use materialize::Materialize;

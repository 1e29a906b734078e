//! Which units a pipeline accepts: an event-type matcher plus content filters.

use std::fmt;
use std::sync::Arc;

use regex::Regex;

use crate::uow::UnitOfWork;

/// Matches an event's `type`: any, an exact string, one of a list, a regex (unanchored, as a
/// JavaScript `RegExp.test` is) or a predicate.
///
/// ```
/// use lambda_stream::EventType;
/// use regex::Regex;
///
/// assert!(EventType::from("thing-created").matches("thing-created"));
/// assert!(EventType::from(["a", "b"]).matches("b"));
/// assert!(EventType::from(Regex::new("^thing-").unwrap()).matches("thing-deleted"));
/// assert!(EventType::predicate(|t| t.ends_with("-deleted")).matches("x-deleted"));
/// ```
#[derive(Clone, Default)]
pub enum EventType {
    /// Every type.
    #[default]
    Any,
    /// Exactly this type.
    Exact(String),
    /// One of these types.
    OneOf(Vec<String>),
    /// Types the regex finds a match in.
    Regex(Regex),
    /// Types the predicate accepts.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl EventType {
    /// A matcher from a predicate.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        EventType::Predicate(Arc::new(f))
    }

    /// Whether `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventType::Any => true,
            EventType::Exact(t) => t == event_type,
            EventType::OneOf(ts) => ts.iter().any(|t| t == event_type),
            EventType::Regex(r) => r.is_match(event_type),
            EventType::Predicate(f) => f(event_type),
        }
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventType::Any => f.write_str("Any"),
            EventType::Exact(t) => write!(f, "Exact({t:?})"),
            EventType::OneOf(ts) => write!(f, "OneOf({ts:?})"),
            EventType::Regex(r) => write!(f, "Regex({:?})", r.as_str()),
            EventType::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

impl From<&str> for EventType {
    fn from(t: &str) -> Self {
        EventType::Exact(t.to_owned())
    }
}

impl From<String> for EventType {
    fn from(t: String) -> Self {
        EventType::Exact(t)
    }
}

impl From<Vec<&str>> for EventType {
    fn from(ts: Vec<&str>) -> Self {
        EventType::OneOf(ts.into_iter().map(str::to_owned).collect())
    }
}

impl From<Vec<String>> for EventType {
    fn from(ts: Vec<String>) -> Self {
        EventType::OneOf(ts)
    }
}

impl<const N: usize> From<[&str; N]> for EventType {
    fn from(ts: [&str; N]) -> Self {
        EventType::OneOf(ts.iter().map(|t| (*t).to_owned()).collect())
    }
}

impl From<Regex> for EventType {
    fn from(r: Regex) -> Self {
        EventType::Regex(r)
    }
}

pub(crate) type Filter = Arc<dyn Fn(&UnitOfWork) -> bool + Send + Sync>;

/// A pipeline's entry rule.
#[derive(Clone, Default)]
pub(crate) struct Rule {
    pub(crate) event_type: EventType,
    pub(crate) filters: Vec<Filter>,
}

impl Rule {
    pub(crate) fn accepts(&self, uow: &UnitOfWork) -> bool {
        self.event_type.matches(&uow.event().event_type) && self.filters.iter().all(|f| f(uow))
    }
}

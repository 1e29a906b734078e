//! The standard tags every published event carries.

use serde_json::{Map, Value};

/// Adds the `standard` tags (see [`Settings::standard_tags`](crate::Settings::standard_tags))
/// and `pipeline` that `event_tags` lacks; tags already set are kept.
///
/// ```
/// let mut settings = lambda_stream::Settings::default();
/// settings.stage = Some("dev".into());
/// let mut tags = serde_json::Map::new();
/// tags.insert("source".into(), "upstream".into());
/// lambda_stream::tags::add_standard(&mut tags, &settings.standard_tags(), "p1");
/// assert_eq!(tags["pipeline"], "p1");
/// assert_eq!(tags["stage"], "dev");
/// assert_eq!(tags["source"], "upstream");
/// ```
pub fn add_standard(
    event_tags: &mut Map<String, Value>,
    standard: &Map<String, Value>,
    pipeline: &str,
) {
    for (tag, value) in standard {
        if !event_tags.contains_key(tag) {
            event_tags.insert(tag.clone(), value.clone());
        }
    }
    if !event_tags.contains_key("pipeline") {
        event_tags.insert("pipeline".into(), Value::from(pipeline));
    }
}

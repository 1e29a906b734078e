//! The standard tags every published event carries.

use serde_json::{Map, Value};

/// Adds the standard tags that `event_tags` lacks: `account` (`ACCOUNT_NAME`), `region`
/// (`AWS_REGION`), `stage` (`STAGE`), `source` (`SERVICE`), `functionname`
/// (`AWS_LAMBDA_FUNCTION_NAME`) and `pipeline`. Tags already set are kept.
///
/// ```
/// let mut tags = serde_json::Map::new();
/// tags.insert("source".into(), "upstream".into());
/// lambda_stream::tags::add_standard(&mut tags, "p1");
/// assert_eq!(tags["pipeline"], "p1");
/// assert_eq!(tags["source"], "upstream");
/// ```
pub fn add_standard(event_tags: &mut Map<String, Value>, pipeline: &str) {
    for (tag, var) in [
        ("account", "ACCOUNT_NAME"),
        ("region", "AWS_REGION"),
        ("stage", "STAGE"),
        ("source", "SERVICE"),
        ("functionname", "AWS_LAMBDA_FUNCTION_NAME"),
    ] {
        if !event_tags.contains_key(tag)
            && let Ok(v) = std::env::var(var)
        {
            event_tags.insert(tag.into(), Value::from(v));
        }
    }
    if !event_tags.contains_key("pipeline") {
        event_tags.insert("pipeline".into(), Value::from(pipeline));
    }
}

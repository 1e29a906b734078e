//! Event patterns, as event source mapping filters and EventBridge rules use them.
//!
//! Supported: exact values (strings, numbers, booleans, null), `prefix`, `suffix`,
//! `equals-ignore-case`, `anything-but` (a value, a list, or a prefix), `exists` and `numeric`
//! ranges, nested objects, and array-valued fields (a field matches if any element does).

use serde_json::Value;

use crate::Error;

/// A parsed event pattern.
///
/// ```
/// use local_stack::pattern::Pattern;
/// let p = Pattern::parse(r#"{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"sk": {"S": ["stream"]}}}}"#).unwrap();
/// assert!(p.matches(&serde_json::json!({"eventName": "INSERT", "dynamodb": {"NewImage": {"sk": {"S": "stream"}}}})));
/// assert!(!p.matches(&serde_json::json!({"eventName": "REMOVE"})));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern(Value);

impl Pattern {
    /// Parses a pattern's JSON text; it must be an object.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Template(format!("filter pattern is not JSON: {e}: {text}")))?;
        Self::from_value(value)
    }

    /// A pattern from its JSON value; it must be an object.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        if !value.is_object() {
            return Err(Error::Template(format!(
                "a pattern must be an object: {value}"
            )));
        }
        Ok(Self(value))
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &Value) -> bool {
        object_matches(&self.0, event)
    }
}

fn object_matches(pattern: &Value, event: &Value) -> bool {
    let Some(fields) = pattern.as_object() else {
        return false;
    };
    fields.iter().all(|(key, p)| {
        let field = event.get(key);
        match p {
            Value::Object(_) => field.is_some_and(|f| match f {
                Value::Array(items) => items.iter().any(|i| object_matches(p, i)),
                other => object_matches(p, other),
            }),
            Value::Array(matchers) => matchers.iter().any(|m| matcher_matches(m, field)),
            // a bare scalar is read as a one-value list
            scalar => matcher_matches(scalar, field),
        }
    })
}

fn matcher_matches(matcher: &Value, field: Option<&Value>) -> bool {
    if let Some(Value::Bool(wanted)) = matcher.get("exists") {
        return field.is_some() == *wanted;
    }
    let Some(field) = field else {
        return false;
    };
    match field {
        Value::Array(items) => items.iter().any(|i| value_matches(matcher, i)),
        other => value_matches(matcher, other),
    }
}

fn value_matches(matcher: &Value, v: &Value) -> bool {
    match matcher {
        Value::Object(m) => {
            let Some((op, arg)) = m.iter().next() else {
                return false;
            };
            match op.as_str() {
                "prefix" => str_op(arg, v, |a, s| s.starts_with(a)),
                "suffix" => str_op(arg, v, |a, s| s.ends_with(a)),
                "equals-ignore-case" => str_op(arg, v, |a, s| s.eq_ignore_ascii_case(a)),
                "anything-but" => match arg {
                    Value::Array(list) => !list.iter().any(|x| scalar_eq(x, v)),
                    Value::Object(_) => !value_matches(arg, v),
                    scalar => !scalar_eq(scalar, v),
                },
                "numeric" => numeric(arg, v),
                _ => false,
            }
        }
        scalar => scalar_eq(scalar, v),
    }
}

fn str_op(arg: &Value, v: &Value, f: impl Fn(&str, &str) -> bool) -> bool {
    match (arg.as_str(), v.as_str()) {
        (Some(a), Some(s)) => f(a, s),
        _ => false,
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn numeric(arg: &Value, v: &Value) -> bool {
    let (Some(ops), Some(x)) = (arg.as_array(), v.as_f64()) else {
        return false;
    };
    ops.chunks(2).all(|pair| {
        let (Some(op), Some(bound)) = (
            pair.first().and_then(Value::as_str),
            pair.get(1).and_then(Value::as_f64),
        ) else {
            return false;
        };
        match op {
            "=" => x == bound,
            "<" => x < bound,
            "<=" => x <= bound,
            ">" => x > bound,
            ">=" => x >= bound,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Pattern {
        Pattern::from_value(v).unwrap()
    }

    #[test]
    fn values_lists_and_nesting() {
        let pat = p(json!({"source": ["custom"], "detail": {"type": ["a", "b"]}}));
        assert!(pat.matches(&json!({"source": "custom", "detail": {"type": "b"}})));
        assert!(!pat.matches(&json!({"source": "custom", "detail": {"type": "c"}})));
        assert!(!pat.matches(&json!({"source": "custom"})));
        assert!(pat.matches(&json!({"source": "custom", "detail": {"type": ["x", "a"]}})));
    }

    #[test]
    fn operators() {
        assert!(p(json!({"t": [{"anything-but": ["fault"]}]})).matches(&json!({"t": "x"})));
        assert!(!p(json!({"t": [{"anything-but": ["fault"]}]})).matches(&json!({"t": "fault"})));
        assert!(p(json!({"t": [{"anything-but": {"prefix": "f"}}]})).matches(&json!({"t": "x"})));
        assert!(p(json!({"t": [{"prefix": "th"}]})).matches(&json!({"t": "thing"})));
        assert!(p(json!({"t": [{"suffix": "ng"}]})).matches(&json!({"t": "thing"})));
        assert!(p(json!({"t": [{"equals-ignore-case": "THING"}]})).matches(&json!({"t": "thing"})));
        assert!(p(json!({"n": [{"numeric": [">", 1, "<=", 5]}]})).matches(&json!({"n": 5})));
        assert!(!p(json!({"n": [{"numeric": [">", 1, "<=", 5]}]})).matches(&json!({"n": 6})));
        assert!(p(json!({"n": [3]})).matches(&json!({"n": 3.0})));
        assert!(p(json!({"gone": [{"exists": false}]})).matches(&json!({"t": 1})));
        assert!(!p(json!({"gone": [{"exists": false}]})).matches(&json!({"gone": 1})));
        assert!(p(json!({"here": [{"exists": true}]})).matches(&json!({"here": 1})));
    }

    #[test]
    fn non_object_patterns_are_rejected() {
        assert!(Pattern::parse("[1]").is_err());
        assert!(Pattern::parse("{").is_err());
    }
}

//! DynamoDB expression helpers, from plain JSON.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::StepError;

/// An update and/or condition expression with its aliased names and values (JSON values; the
/// connector converts them to DynamoDB attribute values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expression {
    /// `SET ... REMOVE ...`, if any.
    pub update: Option<String>,
    /// The condition, if any.
    pub condition: Option<String>,
    /// `#alias` → attribute name.
    pub names: HashMap<String, String>,
    /// `:alias` → value.
    pub values: Map<String, Value>,
    /// A failed condition means the write is stale (a newer version is stored): skip it, as a
    /// success. Set by [`timestamp_condition`](Expression::timestamp_condition) and
    /// [`pk_condition`].
    pub stale_on_condition_failure: bool,
    /// Field name → (name alias, value alias) of the update.
    aliases: HashMap<String, (String, String)>,
}

/// An update expression from a JSON object: each value is `SET`, each `null` is `REMOVE`. Names
/// and values are aliased by position (`#a0`, `:a0`), so any attribute name is safe.
///
/// ```
/// use lambda_stream::expressions::update_expression;
/// use serde_json::json;
///
/// let e = update_expression(&json!({"name": "x", "old-field": null, "timestamp": 5})).unwrap();
/// assert_eq!(e.update.as_deref(), Some("SET #a0 = :a0, #a2 = :a2 REMOVE #a1"));
/// assert_eq!(e.names["#a1"], "old-field");
/// assert_eq!(e.values[":a2"], 5);
/// ```
pub fn update_expression(fields: &Value) -> Result<Expression, StepError> {
    let object = fields
        .as_object()
        .ok_or_else(|| StepError::poison_msg("update_expression needs a JSON object"))?;
    let mut e = Expression::default();
    let (mut set, mut remove) = (Vec::new(), Vec::new());
    for (i, (field, value)) in object.iter().enumerate() {
        let (name, val) = (format!("#a{i}"), format!(":a{i}"));
        e.names.insert(name.clone(), field.clone());
        if value.is_null() {
            remove.push(name.clone());
        } else {
            set.push(format!("{name} = {val}"));
            e.values.insert(val.clone(), value.clone());
        }
        e.aliases.insert(field.clone(), (name, val));
    }
    let mut update = String::new();
    if !set.is_empty() {
        update.push_str("SET ");
        update.push_str(&set.join(", "));
    }
    if !remove.is_empty() {
        if !update.is_empty() {
            update.push(' ');
        }
        update.push_str("REMOVE ");
        update.push_str(&remove.join(", "));
    }
    e.update = (!update.is_empty()).then_some(update);
    Ok(e)
}

impl Expression {
    /// The inverse optimistic lock: write only if the stored `timestamp` is absent or older than
    /// the update's. An older event arriving late then never overwrites a newer one, and a
    /// redelivered one changes nothing. The update must set `timestamp`.
    ///
    /// ```
    /// use lambda_stream::expressions::update_expression;
    /// let e = update_expression(&serde_json::json!({"timestamp": 5})).unwrap().timestamp_condition().unwrap();
    /// assert_eq!(e.condition.as_deref(), Some("attribute_not_exists(#a0) OR #a0 < :a0"));
    /// ```
    pub fn timestamp_condition(mut self) -> Result<Self, StepError> {
        let (name, val) = self
            .aliases
            .get("timestamp")
            .filter(|(_, val)| self.values.contains_key(val))
            .cloned()
            .ok_or_else(|| {
                StepError::poison_msg("timestamp_condition needs the update to set `timestamp`")
            })?;
        self.add_condition(format!("attribute_not_exists({name}) OR {name} < {val}"));
        self.stale_on_condition_failure = true;
        Ok(self)
    }

    /// Adds `SET field = value` to the update.
    ///
    /// ```
    /// use lambda_stream::expressions::update_expression;
    /// let e = update_expression(&serde_json::json!({"gone": null})).unwrap().set("latched", true.into());
    /// assert_eq!(e.update.as_deref(), Some("SET #s1 = :s1 REMOVE #a0"));
    /// ```
    pub fn set(mut self, field: &str, value: Value) -> Self {
        let i = self.names.len();
        let (name, val) = (format!("#s{i}"), format!(":s{i}"));
        let clause = format!("{name} = {val}");
        self.update = Some(match self.update.take() {
            Some(u) if u.starts_with("SET ") => format!("SET {clause}, {}", &u[4..]),
            Some(u) => format!("SET {clause} {u}"),
            None => format!("SET {clause}"),
        });
        self.names.insert(name.clone(), field.to_owned());
        self.values.insert(val.clone(), value);
        self.aliases.insert(field.to_owned(), (name, val));
        self
    }

    /// Each field this expression sets, with its value.
    pub(crate) fn set_values_mut(&mut self) -> Vec<(&str, &mut Value)> {
        let by_alias: HashMap<&str, &str> = self
            .aliases
            .iter()
            .map(|(field, (_, value))| (value.as_str(), field.as_str()))
            .collect();
        self.values
            .iter_mut()
            .filter_map(|(alias, v)| by_alias.get(alias.as_str()).map(|f| (*f, v)))
            .collect()
    }

    fn add_condition(&mut self, condition: String) {
        self.condition = Some(match self.condition.take() {
            Some(c) => format!("({c}) AND ({condition})"),
            None => condition,
        });
    }
}

/// A condition that the item does not exist yet (`attribute_not_exists(pk)`): the first write
/// wins and a repeated one is skipped as a success (idempotent inserts).
///
/// ```
/// let e = lambda_stream::expressions::pk_condition("pk");
/// assert_eq!(e.condition.as_deref(), Some("attribute_not_exists(#pk)"));
/// ```
pub fn pk_condition(pk: &str) -> Expression {
    let mut e = Expression::default();
    e.names.insert("#pk".into(), pk.to_owned());
    e.condition = Some("attribute_not_exists(#pk)".into());
    e.stale_on_condition_failure = true;
    e
}

/// A condition that the stored item is absent or an older version (`field` lower than
/// `version`): a row is only ever replaced by a higher version, so any order of delivery, any
/// redelivery and any duplicate give the same final row. A lower or equal version is skipped
/// as a success (stale).
///
/// ```
/// let e = lambda_stream::expressions::version_condition("version", 3);
/// assert_eq!(e.condition.as_deref(), Some("attribute_not_exists(#ver) OR #ver < :ver"));
/// assert_eq!(e.values[":ver"], 3);
/// assert!(e.stale_on_condition_failure);
/// ```
pub fn version_condition(field: &str, version: u64) -> Expression {
    let mut e = Expression::default();
    e.names.insert("#ver".into(), field.to_owned());
    e.values.insert(":ver".into(), Value::from(version));
    e.condition = Some("attribute_not_exists(#ver) OR #ver < :ver".into());
    e.stale_on_condition_failure = true;
    e
}

/// A DynamoDB TTL value (epoch seconds): `days` after `start` (epoch milliseconds).
///
/// ```
/// assert_eq!(lambda_stream::expressions::ttl(1_700_000_000_000, 1), 1_700_086_400);
/// ```
pub fn ttl(start: i64, days: i64) -> i64 {
    start / 1000 + days * 86_400
}

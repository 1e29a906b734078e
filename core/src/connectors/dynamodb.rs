//! DynamoDB: update, put, delete, get, batch get, query (all pages), transact write.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, KeysAndAttributes, Put,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use serde_dynamo::aws_sdk_dynamodb_1 as dynamo;
use serde_json::Value;

use crate::aws::classify;
use crate::error::StepError;
use crate::expressions::Expression;
use crate::retry::Retry;

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The write was applied.
    Applied,
    /// The condition failed on a write marked stale-on-failure: a newer version (or the same
    /// item) is already stored; nothing to do.
    Stale,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq)]
pub enum Transacted {
    /// Every item was written.
    Applied,
    /// Nothing was written; each item's reason, in order (`ConditionalCheckFailed`, `None`...).
    Cancelled(Vec<CancellationReason>),
}

/// An update of one item: its key and expression (see [`update_expression`](crate::expressions::update_expression)).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// The table; `None` uses the sink's table (`ENTITY_TABLE_NAME`).
    pub table: Option<String>,
    /// The item's key as JSON, e.g. `{"pk": "t1", "sk": "thing"}`.
    pub key: Value,
    /// Update and condition.
    pub expression: Expression,
}

impl UpdateRequest {
    /// The update as an item of a transaction, in `table` unless the request names one.
    pub fn to_transact_item(&self, table: &str) -> Result<TransactWriteItem, StepError> {
        let e = &self.expression;
        let update = Update::builder()
            .table_name(self.table.as_deref().unwrap_or(table))
            .set_key(Some(item(&self.key)?))
            .set_update_expression(e.update.clone())
            .set_condition_expression(e.condition.clone())
            .set_expression_attribute_names(names(e))
            .set_expression_attribute_values(values(e))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(StepError::poison)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

/// A put of `value` under an optional condition, as an item of a transaction.
pub fn put_transact_item(
    table: &str,
    value: &Value,
    condition: Option<&Expression>,
) -> Result<TransactWriteItem, StepError> {
    put_transact_attributes(table, item(value)?, condition)
}

/// A put of an item already in DynamoDB's attribute values (see
/// [`attributes_of`]) under an optional condition, as an item of a transaction.
pub fn put_transact_attributes(
    table: &str,
    item: HashMap<String, AttributeValue>,
    condition: Option<&Expression>,
) -> Result<TransactWriteItem, StepError> {
    let (expression, names, values) = condition_parts(condition);
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(expression)
        .set_expression_attribute_names(names)
        .set_expression_attribute_values(values)
        .build()
        .map_err(StepError::poison)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A query of one table or index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryRequest {
    /// The table.
    pub table: String,
    /// An index, if any.
    pub index: Option<String>,
    /// The key condition and its aliases (the `condition` of the expression).
    pub expression: Expression,
    /// Items per page (`Limit`); every page is read either way.
    pub page_size: Option<i32>,
    /// A strongly consistent read (tables only; an index is always eventually consistent).
    pub consistent_read: bool,
}

/// One page of a query (with a key condition) or a scan (without), from a cursor: what a job
/// works through across invocations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageRequest {
    /// The table.
    pub table: String,
    /// An index, if any.
    pub index: Option<String>,
    /// The key condition of a query; `None` scans.
    pub key_condition: Option<Expression>,
    /// Items per page (`Limit`).
    pub limit: Option<i32>,
    /// Where to start (a previous page's [`Page::next`]); `None` from the beginning.
    pub start: Option<Value>,
}

/// One page read: its items and where the next page starts (`None`: this was the last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The items, as JSON.
    pub items: Vec<Value>,
    /// The cursor of the next page (DynamoDB's `LastEvaluatedKey`, as JSON).
    pub next: Option<Value>,
}

fn item(v: &Value) -> Result<HashMap<String, AttributeValue>, StepError> {
    match v {
        Value::Object(map) => Ok(attributes_of(map)),
        // not an item: serde_dynamo's error says so
        other => dynamo::to_item(other).map_err(StepError::from),
    }
}

/// An item's fields, as JSON, in DynamoDB's attribute values: what
/// [`DynamoDb::put_attributes`] takes. The values convert as serde_dynamo serializes them.
///
/// ```
/// use lambda_stream::connectors::attributes_of;
/// use serde_json::{Value, json};
///
/// let fields = [("pk".to_owned(), json!("t1")), ("n".to_owned(), json!(2))];
/// let item = attributes_of(fields.iter().map(|(k, v)| (k, v)));
/// assert_eq!(item["n"].as_n().unwrap(), "2");
/// ```
pub fn attributes_of<'a, K: AsRef<str>>(
    fields: impl IntoIterator<Item = (K, &'a Value)>,
) -> HashMap<String, AttributeValue> {
    let fields = fields.into_iter();
    // sized once for the most fields there can be (a filtered iterator's lower bound is 0, and
    // growing the map rehashes every key), within reason: an iterator may claim any bound
    let (least, most) = fields.size_hint();
    let mut item = HashMap::with_capacity(most.unwrap_or(least).min(least.max(256)));
    item.extend(fields.map(|(k, v)| (k.as_ref().to_owned(), attribute(v))));
    item
}

/// A JSON value as DynamoDB stores it, exactly as serde_dynamo serializes it (numbers by
/// their `to_string`, null as `NULL`), without serde's serializer in between: on the write
/// path this conversion was a tenth of the CPU of a `PutItem`.
fn attribute(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        // an integer prints as serde_dynamo prints it; a float must go through `f64`'s own
        // `to_string` (serde_json's shortest form writes `1e300` where it writes the digits)
        Value::Number(n) => AttributeValue::N(match n.as_f64() {
            Some(f) if n.is_f64() => f.to_string(),
            _ => n.to_string(),
        }),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(attribute).collect()),
        Value::Object(map) => AttributeValue::M(attributes_of(map)),
    }
}

fn values(e: &Expression) -> Option<HashMap<String, AttributeValue>> {
    (!e.values.is_empty()).then(|| attributes_of(&e.values))
}

fn names(e: &Expression) -> Option<HashMap<String, String>> {
    (!e.names.is_empty()).then(|| e.names.clone())
}

/// An optional condition's expression, names and values, as the write builders take them.
type ConditionParts = (
    Option<String>,
    Option<HashMap<String, String>>,
    Option<HashMap<String, AttributeValue>>,
);

fn condition_parts(condition: Option<&Expression>) -> ConditionParts {
    match condition {
        Some(c) => (c.condition.clone(), names(c), values(c)),
        None => (None, None, None),
    }
}

fn to_json(item: HashMap<String, AttributeValue>) -> Result<Value, StepError> {
    dynamo::from_item(item).map_err(StepError::from)
}

/// A thin connector over the DynamoDB client.
#[derive(Debug, Clone)]
pub struct DynamoDb {
    client: Client,
}

impl DynamoDb {
    /// Over `client`.
    pub fn new(client: Client) -> Self {
        DynamoDb { client }
    }

    /// Over the process's shared client.
    pub async fn shared() -> Self {
        DynamoDb::new(crate::aws::dynamodb().await.clone())
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Updates one item.
    pub async fn update(&self, table: &str, req: &UpdateRequest) -> Result<Written, StepError> {
        let e = &req.expression;
        let send = self
            .client
            .update_item()
            .table_name(req.table.as_deref().unwrap_or(table))
            .set_key(Some(item(&req.key)?))
            .set_update_expression(e.update.clone())
            .set_condition_expression(e.condition.clone())
            .set_expression_attribute_names(names(e))
            .set_expression_attribute_values(values(e))
            .send();
        // boxed: the SDK's future is ~6 KB, and unboxed it is copied each time a pipeline
        // future holding it moves (into its task, its panic guard, its set of running calls);
        // boxing every DynamoDB call took ~4 % of the instructions off a 5,000-`PutItem` batch
        let result = Box::pin(send).await;
        match result {
            Ok(_) => Ok(Written::Applied),
            Err(err)
                if e.stale_on_condition_failure
                    && err
                        .as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(Written::Stale)
            }
            Err(err) => Err(classify(err)),
        }
    }

    /// Puts one item, under an optional condition (e.g. [`pk_condition`](crate::expressions::pk_condition)).
    pub async fn put(
        &self,
        table: &str,
        value: &Value,
        condition: Option<&Expression>,
    ) -> Result<Written, StepError> {
        self.put_attributes(table, item(value)?, condition).await
    }

    /// Puts an item already in DynamoDB's attribute values (see [`attributes_of`]) into
    /// `table`, under an optional condition; as [`put`](DynamoDb::put) otherwise.
    pub async fn put_attributes(
        &self,
        table: &str,
        item: HashMap<String, AttributeValue>,
        condition: Option<&Expression>,
    ) -> Result<Written, StepError> {
        let (expression, names, values) = condition_parts(condition);
        let send = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .set_condition_expression(expression)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(values)
            .send();
        let result = Box::pin(send).await;
        match result {
            Ok(_) => Ok(Written::Applied),
            Err(err)
                if condition.is_some_and(|c| c.stale_on_condition_failure)
                    && err
                        .as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(Written::Stale)
            }
            Err(err) => Err(classify(err)),
        }
    }

    /// Deletes one item.
    pub async fn delete(&self, table: &str, key: &Value) -> Result<(), StepError> {
        let send = self
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(item(key)?))
            .send();
        Box::pin(send).await.map_err(classify)?;
        Ok(())
    }

    /// Reads one item (strongly consistent).
    pub async fn get(&self, table: &str, key: &Value) -> Result<Option<Value>, StepError> {
        let send = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(item(key)?))
            .consistent_read(true)
            .send();
        let out = Box::pin(send).await.map_err(classify)?;
        out.item.map(to_json).transpose()
    }

    /// Reads many items, 100 keys a request, sending unprocessed keys again with backoff.
    pub async fn batch_get(&self, table: &str, keys: &[Value]) -> Result<Vec<Value>, StepError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(item).collect::<Result<_, _>>()?;
            let mut delays = Retry {
                attempts: 5,
                ..Retry::default()
            }
            .delays();
            while !pending.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .build()
                    .map_err(|e| StepError::poison(e.to_string()))?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(table, request)
                    .send()
                    .await
                    .map_err(classify)?;
                for it in out
                    .responses
                    .unwrap_or_default()
                    .remove(table)
                    .unwrap_or_default()
                {
                    found.push(to_json(it)?);
                }
                pending = out
                    .unprocessed_keys
                    .unwrap_or_default()
                    .remove(table)
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if !pending.is_empty() {
                    let delay = delays.next().ok_or_else(|| {
                        StepError::transient(format!("{} keys still unprocessed", pending.len()))
                    })?;
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Ok(found)
    }

    /// Queries every page.
    pub async fn query(&self, req: &QueryRequest) -> Result<Vec<Value>, StepError> {
        let e = &req.expression;
        let mut pages = self
            .client
            .query()
            .table_name(&req.table)
            .set_index_name(req.index.clone())
            .set_key_condition_expression(e.condition.clone())
            .set_expression_attribute_names(names(e))
            .set_expression_attribute_values(values(e))
            .set_limit(req.page_size)
            .set_consistent_read(req.consistent_read.then_some(true))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for it in page.map_err(classify)?.items.unwrap_or_default() {
                out.push(to_json(it)?);
            }
        }
        Ok(out)
    }

    /// Reads one page of a query or scan.
    pub async fn page(&self, req: &PageRequest) -> Result<Page, StepError> {
        let start = req.start.as_ref().map(item).transpose()?;
        let (items, next) = match &req.key_condition {
            Some(e) => {
                let out = self
                    .client
                    .query()
                    .table_name(&req.table)
                    .set_index_name(req.index.clone())
                    .set_key_condition_expression(e.condition.clone())
                    .set_expression_attribute_names(names(e))
                    .set_expression_attribute_values(values(e))
                    .set_limit(req.limit)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(classify)?;
                (out.items, out.last_evaluated_key)
            }
            None => {
                let out = self
                    .client
                    .scan()
                    .table_name(&req.table)
                    .set_index_name(req.index.clone())
                    .set_limit(req.limit)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(classify)?;
                (out.items, out.last_evaluated_key)
            }
        };
        Ok(Page {
            items: items
                .unwrap_or_default()
                .into_iter()
                .map(to_json)
                .collect::<Result<_, _>>()?,
            next: next.filter(|k| !k.is_empty()).map(to_json).transpose()?,
        })
    }

    /// Writes items in one transaction, telling a cancellation (with each item's reason, in
    /// order) from an error.
    pub async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Transacted, StepError> {
        let send = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send();
        let result = Box::pin(send).await;
        match result {
            Ok(_) => Ok(Transacted::Applied),
            Err(err) => match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    Ok(Transacted::Cancelled(c.cancellation_reasons().to_vec()))
                }
                _ => Err(classify(err)),
            },
        }
    }

    /// Writes items in one transaction (all or nothing).
    pub async fn transact_write(&self, items: Vec<TransactWriteItem>) -> Result<(), StepError> {
        let send = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send();
        Box::pin(send).await.map_err(classify)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_item_converts_exactly_as_serde_dynamo_converts_it() {
        let v = json!({
            "pk": "thing-1", "empty": "", "n": 42, "neg": -7, "big": u64::MAX,
            "f": 1.5, "whole": 2.0, "tiny": 1e-7, "huge": 1e300, "t": true, "nothing": null,
            "list": [1, "a", null, [false], {"x": 0.1}],
            "nested": {"deeper": {"name": "Lamp \"2\"", "tags": []}, "o": {}}
        });
        assert_eq!(item(&v).unwrap(), dynamo::to_item(&v).unwrap());
        let mut e = Expression::default();
        e.values.insert(":v".to_owned(), json!(3));
        e.values.insert(":s".to_owned(), json!({"a": [1.25]}));
        let expected: HashMap<String, AttributeValue> = e
            .values
            .iter()
            .map(|(k, v)| (k.clone(), dynamo::to_attribute_value(v).unwrap()))
            .collect();
        assert_eq!(values(&e), Some(expected));
        assert_eq!(values(&Expression::default()), None);
    }

    #[test]
    fn what_is_not_an_object_is_no_item() {
        assert!(item(&json!([1])).is_err());
        assert!(item(&json!("pk")).is_err());
    }
}

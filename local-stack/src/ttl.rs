//! DynamoDB's TTL process, which the emulator does not run: items whose TTL attribute is in
//! the past are deleted, each under a condition that its TTL is still the one read (an item
//! written again meanwhile is kept), so the REMOVE reaches the table's stream and the
//! `expired` rules see it. DynamoDB deletes within days of the TTL; this sweeps every
//! [`EVERY`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use tokio::sync::watch;

use crate::Error;
use crate::template::{Names, Template};

/// How often the tables are swept.
pub const EVERY: Duration = Duration::from_secs(2);

/// A table with TTL on: its name, the TTL attribute and the key attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct TtlTable {
    /// The table's name.
    pub name: String,
    /// The TTL attribute (epoch seconds).
    pub attribute: String,
    /// The key attributes (partition, then sort).
    pub keys: Vec<String>,
}

/// The template's tables with `TimeToLiveSpecification` enabled.
pub fn tables(template: &Template, names: &Names) -> Result<Vec<TtlTable>, Error> {
    let mut out = Vec::new();
    for (id, r) in &template.resources {
        if r.kind != "AWS::DynamoDB::Table" {
            continue;
        }
        let p = &r.properties;
        let Some(spec) = p
            .get("TimeToLiveSpecification")
            .filter(|t| t["Enabled"] == Value::Bool(true))
        else {
            continue;
        };
        out.push(TtlTable {
            name: names.string(&serde_json::json!({"Ref": id}))?,
            attribute: spec["AttributeName"].as_str().unwrap_or("ttl").to_owned(),
            keys: p["KeySchema"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["AttributeName"].as_str().map(str::to_owned))
                .collect(),
        });
    }
    Ok(out)
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Deletes the items of `table` whose TTL has passed; returns how many.
pub async fn sweep_once(db: &Client, table: &TtlTable) -> Result<usize, Error> {
    let names = HashMap::from([("#t".to_owned(), table.attribute.clone())]);
    let mut pages = db
        .scan()
        .table_name(&table.name)
        .filter_expression("#t < :now")
        .set_expression_attribute_names(Some(names.clone()))
        .expression_attribute_values(":now", AttributeValue::N(now_s().to_string()))
        .into_paginator()
        .send();
    let mut deleted = 0;
    while let Some(page) = pages.next().await {
        for item in page.map_err(Error::aws)?.items.unwrap_or_default() {
            let Some(ttl) = item.get(&table.attribute).cloned() else {
                continue;
            };
            let key: HashMap<String, AttributeValue> = table
                .keys
                .iter()
                .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            let result = db
                .delete_item()
                .table_name(&table.name)
                .set_key(Some(key))
                .condition_expression("#t = :ttl")
                .set_expression_attribute_names(Some(names.clone()))
                .expression_attribute_values(":ttl", ttl)
                .send()
                .await;
            match result {
                Ok(_) => deleted += 1,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(Error::aws(e)),
            }
        }
    }
    Ok(deleted)
}

/// Sweeps `tables` every [`EVERY`] until `stopped`.
pub async fn run(db: Client, tables: Vec<TtlTable>, mut stopped: watch::Receiver<bool>) {
    loop {
        for table in &tables {
            match sweep_once(&db, table).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(table = %table.name, expired = n, "TTL expiry"),
                Err(e) => tracing::warn!(table = %table.name, error = %e, "TTL sweep failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

//! What Lambda's `UpdateEventSourceMapping` changes on a running mapping: whether it delivers,
//! and its batch size. The pollers read it before each batch; the local Lambda API lists and
//! updates it (`ListEventSourceMappings`, `GetEventSourceMapping`, `UpdateEventSourceMapping`),
//! so a function's circuit breaker works locally as on AWS.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::watch;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One mapping's switch and batch size.
#[derive(Debug)]
pub struct MappingControl {
    /// Its id.
    pub uuid: String,
    /// The function's name.
    pub function: String,
    /// The function's ARN.
    pub function_arn: String,
    /// The source's ARN.
    pub source_arn: String,
    enabled: AtomicBool,
    batch_size: AtomicUsize,
    last_modified: Mutex<f64>,
}

impl MappingControl {
    /// An enabled mapping with the template's batch size.
    pub fn new(function: &str, function_arn: &str, source_arn: &str, batch_size: usize) -> Self {
        MappingControl {
            uuid: uuid::Uuid::new_v4().to_string(),
            function: function.to_owned(),
            function_arn: function_arn.to_owned(),
            source_arn: source_arn.to_owned(),
            enabled: AtomicBool::new(true),
            batch_size: AtomicUsize::new(batch_size.max(1)),
            last_modified: Mutex::new(now_secs()),
        }
    }

    /// True while it delivers.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Waits while the mapping is switched off (nothing is read or delivered then, and the
    /// checkpoint stays); `false` once `stop` turns true, `true` when the poller may go on.
    pub async fn ready(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            if *stop.borrow() {
                return false;
            }
            if self.enabled() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return false,
            }
        }
    }

    /// Records per batch now.
    pub fn batch_size(&self) -> usize {
        self.batch_size.load(Ordering::Acquire)
    }

    /// Applies an `UpdateEventSourceMapping` request body (`Enabled`, `BatchSize`).
    pub fn update(&self, body: &Value) {
        if let Some(on) = body.get("Enabled").and_then(Value::as_bool) {
            self.enabled.store(on, Ordering::Release);
        }
        if let Some(n) = body.get("BatchSize").and_then(Value::as_u64) {
            self.batch_size
                .store((n as usize).max(1), Ordering::Release);
        }
        *self
            .last_modified
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now_secs();
        tracing::warn!(mapping = %self.uuid, function = %self.function, enabled = self.enabled(), batch_size = self.batch_size(), "event source mapping updated");
    }

    /// As Lambda describes it.
    pub fn describe(&self) -> Value {
        json!({
            "UUID": self.uuid,
            "State": if self.enabled() { "Enabled" } else { "Disabled" },
            "BatchSize": self.batch_size(),
            "EventSourceArn": self.source_arn,
            "FunctionArn": self.function_arn,
            "LastModified": *self.last_modified.lock().unwrap_or_else(PoisonError::into_inner),
        })
    }
}

/// Every mapping of the stack.
#[derive(Debug, Default)]
pub struct Controls(Mutex<Vec<Arc<MappingControl>>>);

impl Controls {
    /// Registers a mapping.
    pub fn add(&self, control: Arc<MappingControl>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(control);
    }

    /// The mappings of `function` (name or ARN), of `source` when given.
    pub fn list(&self, function: Option<&str>, source: Option<&str>) -> Vec<Arc<MappingControl>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|c| {
                function.is_none_or(|f| {
                    f == c.function
                        || f == c.function_arn
                        || f.rsplit(':').next() == Some(&c.function)
                })
            })
            .filter(|c| source.is_none_or(|s| s == c.source_arn))
            .cloned()
            .collect()
    }

    /// The mapping `uuid`.
    pub fn get(&self, uuid: &str) -> Option<Arc<MappingControl>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|c| c.uuid == uuid)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_switches_and_resizes_and_is_described_as_lambda_does() {
        let controls = Controls::default();
        let c = Arc::new(MappingControl::new(
            "s-listener",
            "arn:aws:lambda:us-east-1:1:function:s-listener",
            "arn:stream",
            500,
        ));
        controls.add(c.clone());
        assert_eq!(
            controls.list(Some("s-listener"), Some("arn:stream")).len(),
            1
        );
        assert_eq!(
            controls
                .list(Some("arn:aws:lambda:us-east-1:1:function:s-listener"), None)
                .len(),
            1
        );
        assert!(controls.list(Some("other"), None).is_empty());
        c.update(&json!({"Enabled": false}));
        assert!(!c.enabled());
        c.update(&json!({"BatchSize": 10, "Enabled": true}));
        let d = controls.get(&c.uuid).unwrap().describe();
        assert_eq!(
            (d["State"].as_str(), d["BatchSize"].as_u64()),
            (Some("Enabled"), Some(10))
        );
    }
}

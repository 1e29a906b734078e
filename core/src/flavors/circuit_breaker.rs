//! The circuit-breaker flavor: switches event source mappings off and on from alarms, and on
//! again after a cool-down (as aws-lambda-stream's `circuitBreaker`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::breaker::Action;
use crate::connectors::Lambda;
use crate::error::StepError;
use crate::pipeline::{AssembledPipeline, IntoPipeline, Pipeline};
use crate::uow::UnitOfWork;

/// The event type of a CloudWatch alarm's state change on EventBridge.
pub const ALARM_STATE_CHANGE: &str = "CloudWatch Alarm State Change";
/// The event type of an EventBridge schedule.
pub const SCHEDULED_EVENT: &str = "Scheduled Event";

/// Acts on the event source mappings of `functions`:
/// - an alarm (among `alarms`, or any when none are named) going to `ALARM` switches their
///   enabled mappings off (or lowers their batch size, with [`lower_batch_size`](Self::lower_batch_size));
///   going back to `OK` switches them on (or restores the batch size);
/// - a scheduled event switches on the mappings that have been off longer than the cool-down
///   (tripped by a [`CircuitBreaker`](crate::breaker::CircuitBreaker), say).
///
/// Run it from EventBridge (`run::<EventBridge>`): a rule on the alarms' state changes, and a
/// schedule.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::Lambda;
/// use lambda_stream::flavors::CircuitBreakerRule;
/// use std::time::Duration;
///
/// let rule = CircuitBreakerRule::new("breaker", Lambda::shared().await)
///     .function("my-stack-listener")
///     .alarm("my-stack-listener-iterator-age")
///     .cool_down(Duration::from_secs(300));
/// # let _ = rule;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerRule {
    id: String,
    lambda: Lambda,
    functions: Vec<String>,
    alarms: Vec<String>,
    cool_down: Duration,
    action: Action,
    restore_batch_size: Option<i32>,
}

impl CircuitBreakerRule {
    /// A rule that acts through `lambda`; name its functions with [`function`](Self::function).
    pub fn new(id: impl Into<String>, lambda: Lambda) -> Self {
        CircuitBreakerRule {
            id: id.into(),
            lambda,
            functions: Vec::new(),
            alarms: Vec::new(),
            cool_down: Duration::from_secs(300),
            action: Action::Disable,
            restore_batch_size: None,
        }
    }

    /// A function whose mappings it switches.
    pub fn function(mut self, name: impl Into<String>) -> Self {
        self.functions.push(name.into());
        self
    }

    /// An alarm it listens to (none named: every alarm state change it receives).
    pub fn alarm(mut self, name: impl Into<String>) -> Self {
        self.alarms.push(name.into());
        self
    }

    /// How long a mapping stays off before a scheduled event switches it on again.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// On `ALARM`, lower the batch size to `lowered` instead of switching off; on `OK`, set it
    /// back to `restored`.
    pub fn lower_batch_size(mut self, lowered: i32, restored: i32) -> Self {
        self.action = Action::BatchSize(lowered);
        self.restore_batch_size = Some(restored);
        self
    }

    /// What a unit's event asks for.
    async fn apply(&self, uow: &UnitOfWork) -> Result<(), StepError> {
        let event = uow.event();
        if event.event_type == SCHEDULED_EVENT {
            return self.after_cool_down().await;
        }
        let alarm = event
            .fields
            .get("alarmName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !self.alarms.is_empty() && !self.alarms.iter().any(|a| a == alarm) {
            return Ok(());
        }
        let state = event
            .fields
            .get("state")
            .and_then(|s| s.get("value"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let (open, close) = match (self.action, state) {
            (Action::Disable, "ALARM") => ((Some(false), None), true),
            (Action::BatchSize(n), "ALARM") => ((None, Some(n)), true),
            (Action::Disable, "OK") => ((Some(true), None), false),
            (Action::BatchSize(_), "OK") => ((None, self.restore_batch_size), false),
            _ => return Ok(()),
        };
        for function in &self.functions {
            for m in self.lambda.mappings(function, None).await? {
                // only what would change: an alarm delivered twice changes nothing twice
                let needed = match self.action {
                    Action::Disable => m.enabled() == close,
                    Action::BatchSize(_) => m.batch_size != open.1,
                };
                if needed {
                    self.lambda.update_mapping(&m.uuid, open.0, open.1).await?;
                    tracing::warn!(%function, mapping = %m.uuid, %alarm, %state, "circuit breaker");
                }
            }
        }
        Ok(())
    }

    /// Switches on the mappings off for longer than the cool-down.
    async fn after_cool_down(&self) -> Result<(), StepError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let cool_down = self.cool_down.as_millis() as i64;
        for function in &self.functions {
            for m in self.lambda.mappings(function, None).await? {
                let off_since = m.last_modified_ms.unwrap_or(0);
                if m.state == "Disabled" && now - off_since >= cool_down {
                    self.lambda
                        .update_mapping(&m.uuid, Some(true), None)
                        .await?;
                    tracing::warn!(%function, mapping = %m.uuid, "circuit breaker: on again after the cool-down");
                }
            }
        }
        Ok(())
    }
}

impl IntoPipeline for CircuitBreakerRule {
    fn into_pipeline(self) -> AssembledPipeline {
        let rule = Arc::new(self);
        Pipeline::new(rule.id.clone())
            .on_event_type([ALARM_STATE_CHANGE, SCHEDULED_EVENT])
            .parallel(1)
            .then(move |uow: UnitOfWork| {
                let rule = Arc::clone(&rule);
                async move {
                    rule.apply(&uow).await?;
                    Ok::<_, StepError>(uow)
                }
            })
            .into_pipeline()
    }
}

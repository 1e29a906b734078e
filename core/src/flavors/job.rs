//! `job`: a query or scan worked through a page per invocation, its cursor kept in the job's
//! own item.

use std::sync::Arc;

use serde_json::{Value, json};

use super::cdc::Target;
use crate::connectors::{DynamoDb, Page, PageRequest, UpdateRequest, Written};
use crate::error::StepError;
use crate::event::Event;
use crate::expressions::Expression;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::record::SourceRecord;
use crate::sinks::BatchPublisher;
use crate::uow::UnitOfWork;

/// The job item's attribute that holds where the next page starts.
pub const CURSOR: &str = "cursor";
/// The job item's attribute that says how far it is: `done` once the last page is through.
pub const STATUS: &str = "status";

type ToPage = Arc<dyn Fn(&UnitOfWork) -> Option<PageRequest> + Send + Sync>;
type ToEvent = Arc<dyn Fn(&UnitOfWork, &Value) -> Result<Option<Event>, StepError> + Send + Sync>;
type ToUpdate =
    Arc<dyn Fn(&UnitOfWork, &Value) -> Result<Option<UpdateRequest>, StepError> + Send + Sync>;

/// Works through a query or scan one page per invocation (aws-lambda-stream's `job`), from a
/// trigger on the table that holds the job's item:
///
/// 1. the job item's INSERT (or a MODIFY that moved its cursor) → `to_page` names the query or
///    scan and its page size; the page is read from the item's `cursor`;
/// 2. `to_event` maps each row to an event (`None`: skip it), and they are published to the
///    target; with [`update_rows`](Self::update_rows), rows are updated too;
/// 3. only then is the job item updated: `cursor` set to where the next page starts (a MODIFY,
///    which brings the job back for the next page), or removed and `status` set to `done`.
///
/// **The cursor is never lost and never moves twice**: it moves only after its page's events
/// are published, under a condition that it is still the cursor that page was read from. A
/// failure before that sends the job item's change back and the page is read and published
/// again; give events ids derived from the row (e.g. `<job>.<row key>`) so that a repeated
/// page publishes the same events. A redelivered change whose cursor has already moved
/// publishes its page again (same ids) and leaves the cursor alone.
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::{DynamoDb, EventBridge, PageRequest};
/// use lambda_stream::flavors::Job;
/// use lambda_stream::{Event, Settings};
///
/// let bus = EventBridge::from_settings(&Settings::default()).await;
/// let rule = Job::new(
///     "reindex-things",
///     "job-created",
///     DynamoDb::shared().await,
///     |_job| Some(PageRequest { table: "things".into(), limit: Some(100), ..Default::default() }),
///     |job, row| {
///         let id = format!("{}.{}", job.event().id, row["pk"].as_str().unwrap_or_default());
///         Ok(Some(Event::new(id, "thing-reindexed", job.event().timestamp)
///             .with_entity("thing", row.clone())))
///     },
///     bus,
/// );
/// # let _ = rule;
/// # }
/// ```
pub struct Job {
    id: String,
    event_type: EventType,
    db: DynamoDb,
    to_page: ToPage,
    to_event: ToEvent,
    to_update: Option<ToUpdate>,
    target: Target,
}

impl Job {
    /// A job rule: for each change of a job item of `event_type` (its type as the DynamoDB
    /// source names it, e.g. `job-created` and `job-updated` for items with `discriminator:
    /// job`), the next page of `to_page`'s query or scan, mapped by `to_event`, published to
    /// `target`.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        db: DynamoDb,
        to_page: impl Fn(&UnitOfWork) -> Option<PageRequest> + Send + Sync + 'static,
        to_event: impl Fn(&UnitOfWork, &Value) -> Result<Option<Event>, StepError>
        + Send
        + Sync
        + 'static,
        target: impl Into<Target>,
    ) -> Self {
        Job {
            id: id.into(),
            event_type: event_type.into(),
            db,
            to_page: Arc::new(to_page),
            to_event: Arc::new(to_event),
            to_update: None,
            target: target.into(),
        }
    }

    /// Also updates rows of the page: `to_update(job, row)` (`None`: leave it), in the page's
    /// table unless the request names another, before the cursor moves. A repeated page
    /// updates them again: give the requests a condition that makes that harmless.
    pub fn update_rows(
        mut self,
        to_update: impl Fn(&UnitOfWork, &Value) -> Result<Option<UpdateRequest>, StepError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.to_update = Some(Arc::new(to_update));
        self
    }
}

/// A job's page, read and mapped.
struct Worked {
    cursor: Option<Value>,
    page: Page,
    events: Vec<Event>,
    updates: Vec<UpdateRequest>,
    table: String,
}

fn job_item(uow: &UnitOfWork) -> Option<&serde_json::Map<String, Value>> {
    uow.event().raw.as_ref()?.get("new")?.as_object()
}

/// Whether the change starts or continues the job: an INSERT, or a MODIFY that moved the
/// cursor, of an item that is not done.
fn moves_the_job(uow: &UnitOfWork) -> bool {
    let SourceRecord::DynamoDb(record) = uow.record() else {
        return false;
    };
    let Some(new) = job_item(uow) else {
        return false;
    };
    if new.get(STATUS).and_then(Value::as_str) == Some("done") {
        return false;
    }
    match record.event_name() {
        "INSERT" => true,
        "MODIFY" => {
            let old = uow
                .event()
                .raw
                .as_ref()
                .and_then(|r| r.get("old"))
                .and_then(|o| o.get(CURSOR));
            new.get(CURSOR).is_some() && new.get(CURSOR) != old
        }
        _ => false,
    }
}

/// The job item's table and key, from its stream record.
fn job_key<S>(uow: &UnitOfWork<S>) -> Result<(String, Value), StepError> {
    let SourceRecord::DynamoDb(record) = uow.record() else {
        return Err(StepError::poison_msg("a job runs from a DynamoDB stream"));
    };
    let table = record
        .event_source_arn()
        .and_then(|arn| arn.split("table/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| StepError::poison_msg("the job's record names no table"))?;
    let key: Value = serde_dynamo::from_item(record.keys().clone())?;
    Ok((table.to_owned(), key))
}

/// The job item's update: the cursor moved (or the job done), if it is still `read`.
fn advance(read: Option<&Value>, next: Option<&Value>) -> Expression {
    let mut e = Expression::default();
    e.names.insert("#c".into(), CURSOR.into());
    match next {
        Some(next) => {
            e.names.insert("#p".into(), "pages".into());
            e.values.insert(":next".into(), next.clone());
            e.values.insert(":zero".into(), json!(0));
            e.values.insert(":one".into(), json!(1));
            e.update = Some("SET #c = :next, #p = if_not_exists(#p, :zero) + :one".into());
        }
        None => {
            e.names.insert("#s".into(), STATUS.into());
            e.values.insert(":done".into(), json!("done"));
            e.update = Some("SET #s = :done REMOVE #c".into());
        }
    }
    match read {
        Some(read) => {
            e.values.insert(":read".into(), read.clone());
            e.condition = Some("#c = :read".into());
        }
        None => e.condition = Some("attribute_not_exists(#c)".into()),
    }
    // moved already by another delivery of this page: nothing to do
    e.stale_on_condition_failure = true;
    e
}

async fn publish(target: &Target, events: &[Event]) -> Result<(), StepError> {
    if events.is_empty() {
        return Ok(());
    }
    let refs: Vec<&Event> = events.iter().collect();
    let results = match target {
        Target::EventBridge(bus) => bus.publish_all(&refs).await,
        Target::Kinesis(stream) => stream.publish_all(&refs).await,
    };
    results.into_iter().collect()
}

impl IntoPipeline for Job {
    fn into_pipeline(self) -> AssembledPipeline {
        let Job {
            id,
            event_type,
            db,
            to_page,
            to_event,
            to_update,
            target,
        } = self;
        let (reader, writer) = (db.clone(), db);
        let target = Arc::new(target);
        Pipeline::new(id)
            .on_event_type(event_type)
            .on(moves_the_job)
            .then(move |uow: UnitOfWork| {
                let (db, to_page, to_event, to_update) = (
                    reader.clone(),
                    Arc::clone(&to_page),
                    Arc::clone(&to_event),
                    to_update.clone(),
                );
                async move {
                    let cursor = job_item(&uow).and_then(|j| j.get(CURSOR)).cloned();
                    let Some(mut request) = to_page(&uow) else {
                        return Ok(uow.with(None));
                    };
                    request.start = cursor.clone();
                    let page = db.page(&request).await?;
                    let mut events = Vec::with_capacity(page.items.len());
                    let mut updates = Vec::new();
                    for row in &page.items {
                        if let Some(event) = to_event(&uow, row)? {
                            events.push(event);
                        }
                        if let Some(f) = &to_update
                            && let Some(update) = f(&uow, row)?
                        {
                            updates.push(update);
                        }
                    }
                    Ok::<_, StepError>(uow.with(Some(Worked {
                        cursor,
                        page,
                        events,
                        updates,
                        table: request.table,
                    })))
                }
            })
            .filter(|uow: &UnitOfWork<Option<Worked>>| uow.state.is_some())
            .then(move |uow: UnitOfWork<Option<Worked>>| {
                let (db, target) = (writer.clone(), Arc::clone(&target));
                async move {
                    let Some(worked) = uow.state.as_ref() else {
                        return Ok(uow.with(()));
                    };
                    publish(&target, &worked.events).await?;
                    for update in &worked.updates {
                        db.update(&worked.table, update).await?;
                    }
                    let (table, key) = job_key(&uow)?;
                    let request = UpdateRequest {
                        table: None,
                        key,
                        expression: advance(worked.cursor.as_ref(), worked.page.next.as_ref()),
                    };
                    let written = db.update(&table, &request).await?;
                    if written == Written::Stale {
                        tracing::info!(job = %uow.event().id, "cursor already moved: page published again, cursor left");
                    }
                    Ok::<_, StepError>(uow.with(()))
                }
            })
            .into_pipeline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Change, to_dynamodb_records};

    fn units(changes: &[Change]) -> Vec<UnitOfWork> {
        crate::sources::from_dynamodb(
            to_dynamodb_records(changes),
            &crate::sources::DynamoDbOptions::default(),
        )
        .units()
        .to_vec()
    }

    #[test]
    fn the_job_moves_on_its_insert_and_on_each_moved_cursor_only() {
        let job = json!({"pk": "j", "sk": "job", "discriminator": "job"});
        let at = |cursor: Value| {
            let mut j = job.clone();
            j["cursor"] = cursor;
            j
        };
        let mut done = at(json!({"pk": "t9"}));
        done["status"] = json!("done");
        let moved: Vec<bool> = units(&[
            Change::insert(job.clone()),
            Change::modify(job.clone(), at(json!({"pk": "t1"}))),
            Change::modify(at(json!({"pk": "t1"})), at(json!({"pk": "t2"}))),
            // something else about the job changed: not a new page
            Change::modify(at(json!({"pk": "t2"})), {
                let mut j = at(json!({"pk": "t2"}));
                j["note"] = json!("x");
                j
            }),
            Change::modify(at(json!({"pk": "t2"})), done),
            Change::remove(job),
        ])
        .iter()
        .map(moves_the_job)
        .collect();
        assert_eq!(moved, [true, true, true, false, false, false]);
    }

    #[test]
    fn the_cursor_moves_only_from_where_its_page_was_read() {
        let first = advance(None, Some(&json!({"pk": "t1"})));
        assert_eq!(first.condition.as_deref(), Some("attribute_not_exists(#c)"));
        assert!(
            first
                .update
                .as_deref()
                .unwrap()
                .starts_with("SET #c = :next")
        );
        let last = advance(Some(&json!({"pk": "t1"})), None);
        assert_eq!(last.condition.as_deref(), Some("#c = :read"));
        assert_eq!(last.values[":read"], json!({"pk": "t1"}));
        assert_eq!(last.update.as_deref(), Some("SET #s = :done REMOVE #c"));
        assert!(first.stale_on_condition_failure && last.stale_on_condition_failure);
    }

    #[test]
    fn the_job_item_is_found_from_its_stream_record() {
        let job = json!({"pk": "j", "sk": "job", "discriminator": "job"});
        let unit = &units(&[Change::insert(job).in_table("my-jobs")])[0];
        let (table, key) = job_key(unit).unwrap();
        assert_eq!(table, "my-jobs");
        assert_eq!(key, json!({"pk": "j", "sk": "job"}));
    }
}

//! DynamoDB sinks: updates and puts, where a stale write (its condition says a newer version is
//! stored) is a success.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use serde_json::Value;

use super::{Target, with_parallel};
use crate::connectors::{
    DynamoDb, Transacted, UpdateRequest, Written, attributes_of, put_transact_attributes,
    put_transact_item,
};
use crate::error::StepError;
use crate::event::Event;
use crate::expressions::Expression;
use crate::idempotency::{Idempotency, Status};
use crate::pipeline::{Pipeline, Step};
use crate::settings::Settings;
use crate::uow::UnitOfWork;

/// A request one of the DynamoDB sinks writes: [`UpdateRequest`] ([`Update`]) or
/// [`PutRequest`] ([`Put`]). The two sinks share everything but this.
pub trait TableWrite: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// The table the request names, if any; else the sink's.
    fn table(&self) -> Option<&str>;
    /// How many keys at once when the sink is not told (`UPDATE_PARALLEL`, `PUT_PARALLEL`).
    fn parallel(settings: &Settings) -> usize;
    /// Sends the request to `table`; `event` is the unit's (an [`EntityPut`] reads its row
    /// from it).
    fn write(
        &self,
        event: &Event,
        db: &DynamoDb,
        table: &str,
    ) -> impl Future<Output = Result<Written, StepError>> + Send;
    /// The request as an item of a transaction, to `table` unless it names one.
    fn transact_item(&self, event: &Event, table: &str) -> Result<TransactWriteItem, StepError>;
    /// The request's condition, if any.
    fn condition(&self) -> Option<&Expression>;
    /// True when a failed condition means a newer version is stored (a success).
    fn stale_on_condition_failure(&self) -> bool {
        self.condition()
            .is_some_and(|c| c.stale_on_condition_failure)
    }
}

/// Writes each unit's request (a [`TableWrite`]); the state becomes what the write did
/// ([`Written`]). Used as [`Update`] or [`Put`].
#[derive(Debug, Clone)]
pub struct Write<R> {
    db: DynamoDb,
    target: Target,
    once: Option<Once>,
    request: PhantomData<fn(R)>,
}

/// The completion mark written with the effect (see [`Write::exactly_once`]).
#[derive(Clone)]
struct Once {
    table: String,
    key: Arc<dyn Fn(&UnitOfWork) -> String + Send + Sync>,
    ttl_s: u64,
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// [`Write::exactly_once`] needs the guard's marks in a DynamoDB table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exactly once needs an idempotency guard over a DynamoDB table (DynamoDbIdempotency)")]
pub struct NotATable;

/// Writes each unit's [`UpdateRequest`]; a stale update (its condition says a newer version
/// is stored) is a success.
pub type Update = Write<UpdateRequest>;

/// Puts each unit's [`PutRequest`]; a failed stale-on-failure condition is a success.
pub type Put = Write<PutRequest>;

/// Puts each unit's [`EntityPut`]: a row made from its event's entity, converted to
/// DynamoDB's attribute values as it is written; a failed stale-on-failure condition is a
/// success.
pub type PutEntity = Write<EntityPut>;

impl<R: TableWrite> Write<R> {
    /// Through `db`, to the handler's table (`ENTITY_TABLE_NAME`) at the request kind's
    /// parallelism (`UPDATE_PARALLEL` or `PUT_PARALLEL`).
    pub fn new(db: DynamoDb) -> Self {
        Write {
            db,
            target: Target::default(),
            once: None,
            request: PhantomData,
        }
    }

    /// Writes each unit's request and its completion mark in one transaction
    /// (`TransactWriteItems`): the effect happens exactly once, even if the invocation dies
    /// right after it. For a pipeline made [idempotent](crate::AssembledPipeline::idempotent)
    /// with this `guard`, whose marks are in a DynamoDB table; each write then costs a
    /// transaction (twice the write units of the two items).
    ///
    /// ```
    /// # async fn example(db: lambda_stream::connectors::DynamoDb, store: lambda_stream::idempotency::DynamoDbIdempotency) {
    /// use lambda_stream::{IntoPipeline, Pipeline, idempotency::Idempotency, sinks::Update};
    /// # fn to_request(uow: lambda_stream::UnitOfWork) -> Result<lambda_stream::UnitOfWork<lambda_stream::connectors::UpdateRequest>, lambda_stream::StepError> { unimplemented!() }
    ///
    /// let guard = Idempotency::new(store);
    /// let p = Pipeline::new("views")
    ///     .map(to_request)
    ///     .pipe(Update::new(db).exactly_once(&guard).unwrap())
    ///     .into_pipeline()
    ///     .idempotent(guard);
    /// # }
    /// ```
    pub fn exactly_once(mut self, guard: &Idempotency) -> Result<Self, NotATable> {
        let table = guard.table.clone().ok_or(NotATable)?;
        self.once = Some(Once {
            table,
            key: Arc::clone(&guard.key),
            ttl_s: guard.ttl.as_secs(),
        });
        Ok(self)
    }

    /// To `table` when a request names none.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.target.table = Some(table.into());
        self
    }

    /// Up to `n` keys at once.
    pub fn parallel(mut self, n: usize) -> Self {
        self.target.parallel = Some(n);
        self
    }
}

impl<R: TableWrite> Step<UnitOfWork<R>> for Write<R> {
    type Output = UnitOfWork<Written>;

    fn attach(self, pipeline: Pipeline<UnitOfWork<R>>) -> Pipeline<Self::Output> {
        let Write {
            db, target, once, ..
        } = self;
        let pipeline = with_parallel(pipeline, target.parallel);
        if let Some(once) = once {
            return pipeline.then_in_run(R::parallel, move |run| {
                let (db, table) = (db.clone(), target.table_in(&run.settings));
                let (once, pipeline) = (once.clone(), Arc::clone(&run.pipeline));
                move |uow: UnitOfWork<R>| {
                    let (db, table, once) = (db.clone(), table.clone(), once.clone());
                    let id = format!("{pipeline}#{}", (once.key)(&uow.without_state()));
                    async move {
                        let table = uow.state.table().unwrap_or(&table);
                        let written =
                            write_once(&db, table, uow.event(), &uow.state, &once, &id).await?;
                        Ok(uow.with(written))
                    }
                }
            });
        }
        pipeline.then_with_settings(R::parallel, move |settings| {
            let (db, table) = (db.clone(), target.table_in(settings));
            move |uow: UnitOfWork<R>| {
                let (db, table) = (db.clone(), table.clone());
                async move {
                    let table = uow.state.table().unwrap_or(&table);
                    let written = uow.state.write(uow.event(), &db, table).await?;
                    if written == Written::Stale {
                        tracing::debug!(id = %crate::faults::quoted(&uow.event().id), "stale write skipped");
                    }
                    Ok(uow.with(written))
                }
            }
        })
    }
}

fn failed_condition(reason: Option<&CancellationReason>) -> bool {
    reason.and_then(|r| r.code()) == Some("ConditionalCheckFailed")
}

/// The effect and the completion of its claim `id`, in one transaction.
async fn write_once<R: TableWrite>(
    db: &DynamoDb,
    table: &str,
    event: &Event,
    request: &R,
    once: &Once,
    id: &str,
) -> Result<Written, StepError> {
    let expiration = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + once.ttl_s;
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let mark = aws_sdk_dynamodb::types::Update::builder()
        .table_name(&once.table)
        .key("id", s(id))
        .update_expression("SET #status = :done, #exp = :exp, #lock = :zero")
        .condition_expression("#status = :in")
        .set_expression_attribute_names(Some(HashMap::from([
            ("#status".to_owned(), "status".to_owned()),
            ("#exp".to_owned(), "expiration".to_owned()),
            ("#lock".to_owned(), "lockExpiry".to_owned()),
        ])))
        .set_expression_attribute_values(Some(HashMap::from([
            (":done".to_owned(), s(Status::Completed.as_str())),
            (":in".to_owned(), s(Status::InProgress.as_str())),
            (":exp".to_owned(), AttributeValue::N(expiration.to_string())),
            (":zero".to_owned(), AttributeValue::N("0".to_owned())),
        ])))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .map_err(StepError::poison)?;
    let items = vec![
        request.transact_item(event, table)?,
        TransactWriteItem::builder().update(mark).build(),
    ];
    let reasons = match db.transact(items).await? {
        Transacted::Applied => return Ok(Written::Applied),
        Transacted::Cancelled(reasons) => reasons,
    };
    if failed_condition(reasons.first()) && request.stale_on_condition_failure() {
        // a newer version is stored: nothing to write, and the guard completes the claim
        tracing::debug!(id = %crate::faults::quoted(id), "stale write skipped");
        return Ok(Written::Stale);
    }
    if failed_condition(reasons.get(1)) {
        let status = reasons
            .get(1)
            .and_then(|r| r.item())
            .and_then(|i| i.get("status"))
            .and_then(|v| v.as_s().ok());
        if status.map(String::as_str) == Some(Status::Completed.as_str()) {
            tracing::warn!(id = %crate::faults::quoted(id), "completed in another invocation: not written again");
            return Ok(Written::Stale);
        }
        return Err(StepError::poison_msg(format!(
            "no claim in progress for {id}: the pipeline must be idempotent with the same guard"
        ))
        .named("IdempotencyNotClaimed"));
    }
    let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).collect();
    let class = if failed_condition(reasons.first()) {
        crate::error::ErrorClass::Poison
    } else {
        crate::error::ErrorClass::Transient
    };
    Err(StepError::new(
        class,
        "TransactionCanceledException",
        format!("transaction cancelled: {codes:?}"),
    ))
}

impl TableWrite for UpdateRequest {
    fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    fn parallel(settings: &Settings) -> usize {
        settings.update_parallel()
    }

    async fn write(&self, _: &Event, db: &DynamoDb, table: &str) -> Result<Written, StepError> {
        db.update(table, self).await
    }

    fn transact_item(&self, _: &Event, table: &str) -> Result<TransactWriteItem, StepError> {
        self.to_transact_item(table)
    }

    fn condition(&self) -> Option<&Expression> {
        Some(&self.expression)
    }
}

impl TableWrite for PutRequest {
    fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    fn parallel(settings: &Settings) -> usize {
        settings.put_parallel()
    }

    async fn write(&self, _: &Event, db: &DynamoDb, table: &str) -> Result<Written, StepError> {
        db.put(table, &self.item, self.condition.as_ref()).await
    }

    fn transact_item(&self, _: &Event, table: &str) -> Result<TransactWriteItem, StepError> {
        put_transact_item(
            self.table.as_deref().unwrap_or(table),
            &self.item,
            self.condition.as_ref(),
        )
    }

    fn condition(&self) -> Option<&Expression> {
        self.condition.as_ref()
    }
}

/// A put of one item (for [`Put`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PutRequest {
    /// The table; `None` uses the sink's table.
    pub table: Option<String>,
    /// The item as JSON.
    pub item: Value,
    /// An optional condition (e.g. [`pk_condition`](crate::expressions::pk_condition),
    /// [`version_condition`](crate::expressions::version_condition)).
    pub condition: Option<Expression>,
}

/// A put of a row made from an entity of the unit's event (for [`PutEntity`]): the entity's
/// fields, less those named in `without`, with `with`'s fields laid over them.
///
/// The row is not built as JSON: the sink converts the event's fields straight into the
/// attribute values DynamoDB takes, when it writes. A [`PutRequest`] holding the same row
/// copies the entity once more and keeps that copy until the batch ends; for the listener's
/// rows that copy and its drop were a third of the production path's time past decoding.
///
/// ```
/// use lambda_stream::{Event, sinks::EntityPut};
/// use serde_json::json;
///
/// let event = Event::new("e1", "thing-updated", 1)
///     .with_entity("thing", json!({"id": "t1", "name": "a"}));
/// let put = EntityPut::new("thing").without("id").with("pk", json!("t1"));
/// assert_eq!(put.row(&event).unwrap(), json!({"name": "a", "pk": "t1"}));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityPut {
    /// The table; `None` uses the sink's table.
    pub table: Option<String>,
    /// The event's entity the row is made from (see [`Event::entity`]); it must be an object.
    pub entity: Cow<'static, str>,
    /// The entity's fields left out of the row.
    pub without: Vec<Cow<'static, str>>,
    /// Fields laid over the entity's (they win where both have one). Names are usually
    /// literals, so they are not allocated per row; [`with`](Self::with) keeps each once, and
    /// of a name pushed here twice the last is written.
    pub with: Vec<(Cow<'static, str>, Value)>,
    /// An optional condition (e.g. [`version_condition`](crate::expressions::version_condition)).
    pub condition: Option<Expression>,
}

impl EntityPut {
    /// A row of the event's `entity`, whole.
    pub fn new(entity: impl Into<Cow<'static, str>>) -> Self {
        EntityPut {
            entity: entity.into(),
            ..EntityPut::default()
        }
    }

    /// Leaves the entity's `field` out, builder style.
    pub fn without(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.without.push(field.into());
        self
    }

    /// Sets `field` to `value` over the entity's, builder style (a field set twice keeps the
    /// last value).
    pub fn with(mut self, field: impl Into<Cow<'static, str>>, value: Value) -> Self {
        let field = field.into();
        match self.with.iter_mut().find(|(f, _)| *f == field) {
            Some((_, v)) => *v = value,
            None => self.with.push((field, value)),
        }
        self
    }

    /// Under `condition`, builder style.
    pub fn condition(mut self, condition: Expression) -> Self {
        self.condition = Some(condition);
        self
    }

    /// The row's fields in `event`: the entity's kept ones, then those laid over them. An
    /// error when the event has no such entity, or it is not an object.
    pub fn fields<'a>(
        &'a self,
        event: &'a Event,
    ) -> Result<impl Iterator<Item = (&'a str, &'a Value)>, StepError> {
        let entity = event
            .entity(&self.entity)
            .and_then(Value::as_object)
            .ok_or_else(|| {
                StepError::poison_msg(format!(
                    "event {} has no `{}` object",
                    crate::faults::truncate(&event.id, 100),
                    self.entity
                ))
            })?;
        let kept = entity
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .filter(|(k, _)| {
                !self.with.iter().any(|(w, _)| w == k) && !self.without.iter().any(|w| w == k)
            });
        Ok(kept.chain(self.with.iter().map(|(k, v)| (k.as_ref(), v))))
    }

    /// The row in `event`, as JSON: what is written.
    pub fn row(&self, event: &Event) -> Result<Value, StepError> {
        Ok(Value::Object(
            self.fields(event)?
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
        ))
    }
}

impl TableWrite for EntityPut {
    fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    fn parallel(settings: &Settings) -> usize {
        settings.put_parallel()
    }

    async fn write(&self, event: &Event, db: &DynamoDb, table: &str) -> Result<Written, StepError> {
        let item = attributes_of(self.fields(event)?);
        db.put_attributes(table, item, self.condition.as_ref())
            .await
    }

    fn transact_item(&self, event: &Event, table: &str) -> Result<TransactWriteItem, StepError> {
        put_transact_attributes(
            self.table.as_deref().unwrap_or(table),
            attributes_of(self.fields(event)?),
            self.condition.as_ref(),
        )
    }

    fn condition(&self) -> Option<&Expression> {
        self.condition.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expressions::version_condition;
    use serde_json::json;

    fn thing() -> Event {
        Event::new("e1", "thing-updated", 1).with_entity(
            "thing",
            json!({"id": "t1", "name": "a", "n": 1.5, "tags": ["x"], "nested": {"k": null}, "pk": "old"}),
        )
    }

    fn put() -> EntityPut {
        EntityPut::new("thing")
            .without("id")
            .with("pk", json!("t1"))
            .with("version", json!(2))
            .condition(version_condition("version", 2))
    }

    #[test]
    fn the_row_is_the_entity_less_some_fields_with_others_over_it() {
        let row = put().row(&thing()).unwrap();
        // what the listener built by hand before: a copy, less `id`, with its fields inserted
        let mut expected = thing()
            .entity("thing")
            .unwrap()
            .as_object()
            .unwrap()
            .clone();
        expected.remove("id");
        expected.insert("pk".into(), json!("t1"));
        expected.insert("version".into(), json!(2));
        assert_eq!(row, Value::Object(expected));
        // each field once, the laid-over one winning
        let fields: Vec<_> = put()
            .fields(&thing())
            .unwrap()
            .map(|(k, _)| k.to_owned())
            .collect();
        assert_eq!(fields.len(), 6, "{fields:?}");
        // a field laid over twice: the last value, once
        let twice = put().with("version", json!(3));
        assert_eq!(twice.row(&thing()).unwrap()["version"], 3);
        let event = thing();
        let versions = twice
            .fields(&event)
            .unwrap()
            .filter(|(k, _)| *k == "version");
        assert_eq!(versions.count(), 1);
    }

    #[test]
    fn the_item_written_is_the_rows_attribute_values() {
        let event = thing();
        let row = put().row(&event).unwrap();
        let via_json = put_transact_item("t", &row, put().condition.as_ref()).unwrap();
        let direct = put().transact_item(&event, "t").unwrap();
        assert_eq!(direct, via_json);
        assert_eq!(
            direct.put().unwrap().item()["n"],
            AttributeValue::N("1.5".into())
        );
        // a table the request names wins
        let named = EntityPut {
            table: Some("other".into()),
            ..put()
        };
        assert_eq!(
            named
                .transact_item(&event, "t")
                .unwrap()
                .put()
                .unwrap()
                .table_name(),
            "other"
        );
    }

    #[test]
    fn an_event_without_the_entity_object_is_poison() {
        let missing = Event::new("e2", "thing-updated", 1);
        let err = put().row(&missing).unwrap_err();
        assert_eq!(err.class(), crate::error::ErrorClass::Poison);
        assert!(err.to_string().contains("has no `thing` object"), "{err}");
        let scalar = Event::new("e3", "thing-updated", 1).with_entity("thing", json!("t1"));
        assert!(put().transact_item(&scalar, "t").is_err());
        let long_id = Event::new("x".repeat(10_000), "thing-updated", 1);
        assert!(put().row(&long_id).unwrap_err().to_string().len() < 400);
    }
}

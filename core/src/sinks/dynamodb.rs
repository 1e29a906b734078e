//! DynamoDB sinks: updates and puts, where a stale write (its condition says a newer version is
//! stored) is a success.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use serde_json::Value;

use super::{Target, with_parallel};
use crate::connectors::{DynamoDb, Transacted, UpdateRequest, Written, put_transact_item};
use crate::error::StepError;
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
    /// Sends the request to `table`.
    fn write(
        &self,
        db: &DynamoDb,
        table: &str,
    ) -> impl Future<Output = Result<Written, StepError>> + Send;
    /// The request as an item of a transaction, to `table` unless it names one.
    fn transact_item(&self, table: &str) -> Result<TransactWriteItem, StepError>;
    /// True when a failed condition means a newer version is stored (a success).
    fn stale_on_condition_failure(&self) -> bool;
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
                        let written = write_once(&db, table, &uow.state, &once, &id).await?;
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
                    let written = uow.state.write(&db, table).await?;
                    if written == Written::Stale {
                        tracing::debug!(id = %uow.event().id, "stale write skipped");
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
        request.transact_item(table)?,
        TransactWriteItem::builder().update(mark).build(),
    ];
    let reasons = match db.transact(items).await? {
        Transacted::Applied => return Ok(Written::Applied),
        Transacted::Cancelled(reasons) => reasons,
    };
    if failed_condition(reasons.first()) && request.stale_on_condition_failure() {
        // a newer version is stored: nothing to write, and the guard completes the claim
        tracing::debug!(%id, "stale write skipped");
        return Ok(Written::Stale);
    }
    if failed_condition(reasons.get(1)) {
        let status = reasons
            .get(1)
            .and_then(|r| r.item())
            .and_then(|i| i.get("status"))
            .and_then(|v| v.as_s().ok());
        if status.map(String::as_str) == Some(Status::Completed.as_str()) {
            tracing::warn!(%id, "completed in another invocation: not written again");
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

    async fn write(&self, db: &DynamoDb, table: &str) -> Result<Written, StepError> {
        db.update(table, self).await
    }

    fn transact_item(&self, table: &str) -> Result<TransactWriteItem, StepError> {
        self.to_transact_item(table)
    }

    fn stale_on_condition_failure(&self) -> bool {
        self.expression.stale_on_condition_failure
    }
}

impl TableWrite for PutRequest {
    fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    fn parallel(settings: &Settings) -> usize {
        settings.put_parallel()
    }

    async fn write(&self, db: &DynamoDb, table: &str) -> Result<Written, StepError> {
        db.put(table, &self.item, self.condition.as_ref()).await
    }

    fn transact_item(&self, table: &str) -> Result<TransactWriteItem, StepError> {
        put_transact_item(
            self.table.as_deref().unwrap_or(table),
            &self.item,
            self.condition.as_ref(),
        )
    }

    fn stale_on_condition_failure(&self) -> bool {
        self.condition
            .as_ref()
            .is_some_and(|c| c.stale_on_condition_failure)
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

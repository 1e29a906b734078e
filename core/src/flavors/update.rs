//! `update`: the rows related to an event, queried then updated.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};
use serde_json::Value;

use crate::connectors::{DynamoDb, QueryRequest, UpdateRequest};
use crate::error::StepError;
use crate::pipeline::{AssembledPipeline, EventType, IntoPipeline, Pipeline};
use crate::uow::UnitOfWork;

type Query = Arc<dyn Fn(&UnitOfWork) -> Option<QueryRequest> + Send + Sync>;
type ToUpdate =
    Arc<dyn Fn(&UnitOfWork, &Value) -> Result<Option<UpdateRequest>, StepError> + Send + Sync>;

/// Updates the rows related to an event (aws-lambda-stream's `update`): filter by type →
/// `query` the related rows (every page) → `to_update_request` for each row (`None`: leave it)
/// → update them, up to [`parallel`](Self::parallel) rows at once.
///
/// - Every update sets `latched: true`, and latched changes are skipped: a trigger on the
///   table this rule writes to does not react to its own writes, so the rule cannot loop.
/// - A row whose update fails transiently sends the unit back whole; the rows already updated
///   are updated again, so give the requests a condition that makes a repeat harmless (a
///   version or timestamp condition, with `stale_on_condition_failure`).
///
/// ```
/// # async fn example() {
/// use lambda_stream::connectors::{DynamoDb, QueryRequest, UpdateRequest};
/// use lambda_stream::expressions::{Expression, update_expression};
/// use lambda_stream::flavors::UpdateRelated;
/// use serde_json::json;
///
/// // a thing renamed: every order line that shows its name follows
/// let rule = UpdateRelated::new(
///     "rename-lines",
///     "thing-updated",
///     DynamoDb::shared().await,
///     |uow| {
///         let mut key = Expression::default();
///         key.condition = Some("#pk = :pk".into());
///         key.names.insert("#pk".into(), "pk".into());
///         key.values.insert(":pk".into(), json!(format!("lines#{}", uow.partition_key()?)));
///         Some(QueryRequest { table: "orders".into(), expression: key, ..Default::default() })
///     },
///     |uow, row| {
///         let name = uow.event().entity("thing").and_then(|t| t.get("name")).cloned();
///         Ok(Some(UpdateRequest {
///             table: None,
///             key: json!({"pk": row["pk"], "sk": row["sk"]}),
///             expression: update_expression(&json!({"thingName": name, "timestamp": uow.event().timestamp}))?
///                 .timestamp_condition()?,
///         }))
///     },
/// );
/// # let _ = rule;
/// # }
/// ```
pub struct UpdateRelated {
    id: String,
    event_type: EventType,
    db: DynamoDb,
    query: Query,
    to_update_request: ToUpdate,
    parallel: usize,
}

impl UpdateRelated {
    /// A rule updating the rows `query` finds for each event of `event_type`, in the query's
    /// table unless a request names another.
    pub fn new(
        id: impl Into<String>,
        event_type: impl Into<EventType>,
        db: DynamoDb,
        query: impl Fn(&UnitOfWork) -> Option<QueryRequest> + Send + Sync + 'static,
        to_update_request: impl Fn(&UnitOfWork, &Value) -> Result<Option<UpdateRequest>, StepError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        UpdateRelated {
            id: id.into(),
            event_type: event_type.into(),
            db,
            query: Arc::new(query),
            to_update_request: Arc::new(to_update_request),
            parallel: 4,
        }
    }

    /// Updates up to `n` rows of one event at once.
    pub fn parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }
}

impl IntoPipeline for UpdateRelated {
    fn into_pipeline(self) -> AssembledPipeline {
        let UpdateRelated {
            id,
            event_type,
            db,
            query,
            to_update_request,
            parallel,
        } = self;
        Pipeline::new(id)
            .on_event_type(event_type)
            .on(|uow| !uow.is_latched())
            .then(move |uow: UnitOfWork| {
                let (db, query, to_update_request) = (
                    db.clone(),
                    Arc::clone(&query),
                    Arc::clone(&to_update_request),
                );
                async move {
                    let Some(request) = query(&uow) else {
                        return Ok(uow);
                    };
                    let rows = db.query(&request).await?;
                    let mut updates = Vec::with_capacity(rows.len());
                    for row in &rows {
                        if let Some(mut update) = to_update_request(&uow, row)? {
                            update.expression = update.expression.set("latched", Value::Bool(true));
                            updates.push(update);
                        }
                    }
                    let table: Arc<str> = Arc::from(request.table.as_str());
                    stream::iter(updates.into_iter().map(|u| {
                        let (db, table) = (db.clone(), Arc::clone(&table));
                        async move { db.update(&table, &u).await }
                    }))
                    .buffer_unordered(parallel)
                    .try_collect::<Vec<_>>()
                    .await?;
                    Ok::<_, StepError>(uow)
                }
            })
            .into_pipeline()
    }
}

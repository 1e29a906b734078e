//! The idempotency store in a DynamoDB table: key `id` (string), TTL attribute `expiration`.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, PutRequest, ReturnValue, ReturnValuesOnConditionCheckFailure, WriteRequest,
};
use futures::future::BoxFuture;

use super::mark::{Claim, Mark, Status};
use super::{ClaimRequest, IdempotencyStore};
use crate::aws::classify;
use crate::connectors::BatchLimits;
use crate::error::StepError;
use crate::settings::Settings;

/// Items per `BatchWriteItem` request (the API's maximum).
const WRITES_PER_REQUEST: usize = 25;

/// Marks in a DynamoDB table (`IDEMPOTENCY_TABLE_NAME`): a claim is one conditional
/// `UpdateItem`, settling is `BatchWriteItem` (25 marks a request).
///
/// ```no_run
/// # async fn f() {
/// use lambda_stream::{Settings, idempotency::{DynamoDbIdempotency, Idempotency}};
///
/// let settings = Settings::from_env();
/// let store = DynamoDbIdempotency::from_settings(&settings).await;
/// let guard = Idempotency::new(store).max_attempts(5);
/// # let _ = guard;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbIdempotency {
    client: Client,
    table: String,
}

impl DynamoDbIdempotency {
    /// Marks in `table`, through `client`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoDbIdempotency {
            client,
            table: table.into(),
        }
    }

    /// Marks in the settings' idempotency table, through the process's shared client.
    pub async fn from_settings(settings: &Settings) -> Self {
        let table = settings.idempotency_table.clone().unwrap_or_default();
        DynamoDbIdempotency::new(crate::aws::dynamodb().await.clone(), table)
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn to_item(id: &str, mark: &Mark) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("id".to_owned(), s(id)),
        ("status".to_owned(), s(mark.status.as_str())),
        ("lockExpiry".to_owned(), n(mark.lock_expiry_ms)),
        ("expiration".to_owned(), n(mark.expiration_s)),
        ("attempts".to_owned(), n(mark.attempts)),
    ]);
    if let Some(h) = &mark.payload_hash {
        item.insert("payloadHash".to_owned(), s(h));
    }
    if let Some(e) = &mark.last_error {
        item.insert("lastError".to_owned(), s(e));
    }
    if let Some(o) = &mark.owner {
        item.insert("owner".to_owned(), s(o));
    }
    item
}

/// A stored mark; an item that is not one (no or unknown status) reads as none.
fn from_item(item: &HashMap<String, AttributeValue>) -> Option<Mark> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Mark {
        status: Status::parse(&text("status")?)?,
        lock_expiry_ms: num("lockExpiry"),
        expiration_s: num("expiration"),
        payload_hash: text("payloadHash"),
        attempts: u32::try_from(num("attempts")).unwrap_or(u32::MAX),
        last_error: text("lastError"),
        owner: text("owner"),
    })
}

impl DynamoDbIdempotency {
    async fn claim_item(&self, req: &ClaimRequest<'_>) -> Result<Claim, StepError> {
        let mut update =
            "SET #status = :in, #lock = :lock, #exp = :exp, #owner = :owner".to_owned();
        let mut values = HashMap::from([
            (":in".to_owned(), s(Status::InProgress.as_str())),
            (":failed".to_owned(), s(Status::Failed.as_str())),
            (":lock".to_owned(), n(req.lock_expiry_ms)),
            (":exp".to_owned(), n(req.expiration_s)),
            (":now".to_owned(), n(req.now_ms)),
            (":nows".to_owned(), n(req.now_ms / 1000)),
            (":owner".to_owned(), s(req.owner)),
        ]);
        let mut names = HashMap::from([
            ("#id".to_owned(), "id".to_owned()),
            ("#status".to_owned(), "status".to_owned()),
            ("#lock".to_owned(), "lockExpiry".to_owned()),
            ("#exp".to_owned(), "expiration".to_owned()),
            ("#owner".to_owned(), "owner".to_owned()),
        ]);
        // the maps may only hold names the expressions use
        if let Some(h) = req.payload_hash {
            update.push_str(", #hash = :hash");
            values.insert(":hash".to_owned(), s(h));
            names.insert("#hash".to_owned(), "payloadHash".to_owned());
        }
        // what Mark::claimable says, as a condition
        let condition = "attribute_not_exists(#id) OR #status = :failed \
             OR (#status = :in AND #lock < :now) OR #exp < :nows OR #owner = :owner";
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(req.id))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Claim::Taken {
                previous: out.attributes.as_ref().and_then(from_item),
            }),
            Err(err) => {
                let current = err
                    .as_service_error()
                    .filter(|e| e.is_conditional_check_failed_exception())
                    .map(|e| match e {
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
                            c.item.as_ref().and_then(from_item)
                        }
                        _ => None,
                    });
                match current {
                    Some(Some(current)) => Ok(Claim::Held { current }),
                    // the condition failed but the answer did not carry the item: read it
                    Some(None) => match self.read(req.id).await? {
                        Some(current) => Ok(Claim::Held { current }),
                        None => Err(StepError::transient(
                            "idempotency mark removed while it was claimed",
                        )),
                    },
                    None => Err(classify(err)),
                }
            }
        }
    }

    async fn release_claim(&self, id: &str, owner: &str) -> Result<(), StepError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id))
            .update_expression("SET #status = :failed, #lock = :zero REMOVE #owner")
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#lock", "lockExpiry")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // not ours (never written, or another claim's by now): nothing to release
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(classify(err)),
        }
    }

    async fn read(&self, id: &str) -> Result<Option<Mark>, StepError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.item.as_ref().and_then(from_item))
    }

    async fn write_marks(&self, marks: &[(String, Mark)]) -> Result<(), StepError> {
        for chunk in marks.chunks(WRITES_PER_REQUEST) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|(id, mark)| {
                    let put = PutRequest::builder()
                        .set_item(Some(to_item(id, mark)))
                        .build()
                        .map_err(StepError::poison)?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<_, StepError>>()?;
            let mut delays = BatchLimits::RETRY.delays();
            loop {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(classify)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                let Some(delay) = delays.next() else {
                    return Err(StepError::transient(format!(
                        "{} idempotency marks still unprocessed",
                        pending.len()
                    )));
                };
                tokio::time::sleep(delay).await;
            }
        }
        Ok(())
    }
}

impl IdempotencyStore for DynamoDbIdempotency {
    fn claim<'a>(&'a self, req: &'a ClaimRequest<'a>) -> BoxFuture<'a, Result<Claim, StepError>> {
        Box::pin(self.claim_item(req))
    }

    fn settle<'a>(&'a self, marks: &'a [(String, Mark)]) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(self.write_marks(marks))
    }

    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(self.release_claim(id, owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_as_items() {
        let mark = Mark {
            status: Status::Failed,
            lock_expiry_ms: 1_700_000_000_123,
            expiration_s: 1_700_003_600,
            payload_hash: Some("abc".into()),
            attempts: 2,
            last_error: Some("ThrottlingException".into()),
            owner: Some("claim-1".into()),
        };
        let item = to_item("p#1", &mark);
        assert_eq!(item.get("id"), Some(&s("p#1")));
        assert_eq!(from_item(&item), Some(mark));
        assert_eq!(from_item(&HashMap::new()), None);
    }
}

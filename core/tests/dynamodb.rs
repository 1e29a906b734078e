//! The DynamoDB connector and expression helpers against the local emulator (`make test`).

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use lambda_stream::connectors::{DynamoDb, QueryRequest, UpdateRequest, Written};
use lambda_stream::expressions::{Expression, pk_condition, update_expression};
use lambda_stream::testing::create_table;
use lambda_stream::{ErrorClass, aws};
use serde_json::{Value, json};

fn versioned(pk: &str, name: &str, timestamp: i64) -> UpdateRequest {
    UpdateRequest {
        table: None,
        key: json!({"pk": pk, "sk": "thing"}),
        expression: update_expression(&json!({"name": name, "timestamp": timestamp, "gone": null}))
            .unwrap()
            .timestamp_condition()
            .unwrap(),
    }
}

#[tokio::test]
async fn update_with_the_timestamp_condition_is_idempotent_and_never_goes_back_in_time() {
    let table = create_table("things").await;
    let db = DynamoDb::shared().await;
    let key = json!({"pk": "t1", "sk": "thing"});

    assert_eq!(
        db.update(&table, &versioned("t1", "v2", 2000))
            .await
            .unwrap(),
        Written::Applied
    );
    // the same event again: nothing changes
    assert_eq!(
        db.update(&table, &versioned("t1", "v2", 2000))
            .await
            .unwrap(),
        Written::Stale
    );
    // an older event arriving late: skipped
    assert_eq!(
        db.update(&table, &versioned("t1", "v1", 1000))
            .await
            .unwrap(),
        Written::Stale
    );
    let stored = db.get(&table, &key).await.unwrap().unwrap();
    assert_eq!(stored["name"], "v2");
    assert_eq!(stored["timestamp"], 2000);
    // a newer one applies
    assert_eq!(
        db.update(&table, &versioned("t1", "v3", 3000))
            .await
            .unwrap(),
        Written::Applied
    );
    assert_eq!(db.get(&table, &key).await.unwrap().unwrap()["name"], "v3");
}

#[tokio::test]
async fn update_expression_removes_null_fields() {
    let table = create_table("things").await;
    let db = DynamoDb::shared().await;
    let key = json!({"pk": "t2", "sk": "thing"});
    db.put(
        &table,
        &json!({"pk": "t2", "sk": "thing", "gone": "here", "kept": 1}),
        None,
    )
    .await
    .unwrap();
    let req = UpdateRequest {
        table: Some(table.clone()),
        key: key.clone(),
        expression: update_expression(&json!({"gone": null, "odd name-with.dots": true})).unwrap(),
    };
    db.update("ignored-because-the-request-names-a-table", &req)
        .await
        .unwrap();
    let stored = db.get(&table, &key).await.unwrap().unwrap();
    assert!(stored.get("gone").is_none());
    assert_eq!(stored["kept"], 1);
    assert_eq!(stored["odd name-with.dots"], true);
}

#[tokio::test]
async fn put_with_pk_condition_keeps_the_first_write() {
    let table = create_table("ingest").await;
    let db = DynamoDb::shared().await;
    let cond = pk_condition("pk");
    let first = json!({"pk": "s1", "sk": "sha-1", "n": 1});
    let again = json!({"pk": "s1", "sk": "sha-1", "n": 2});
    assert_eq!(
        db.put(&table, &first, Some(&cond)).await.unwrap(),
        Written::Applied
    );
    assert_eq!(
        db.put(&table, &again, Some(&cond)).await.unwrap(),
        Written::Stale
    );
    let stored = db
        .get(&table, &json!({"pk": "s1", "sk": "sha-1"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored["n"], 1);
}

#[tokio::test]
async fn get_delete_batch_get_query_and_transactions() {
    let table = create_table("views").await;
    let db = DynamoDb::shared().await;
    for i in 0..130 {
        let pk = if i < 25 { "q" } else { "b" };
        db.put(
            &table,
            &json!({"pk": pk, "sk": format!("{i:03}"), "i": i}),
            None,
        )
        .await
        .unwrap();
    }
    // batch get: 130 keys take two requests of at most 100
    let keys: Vec<Value> = (0..130)
        .map(|i| json!({"pk": if i < 25 { "q" } else { "b" }, "sk": format!("{i:03}")}))
        .collect();
    assert_eq!(db.batch_get(&table, &keys).await.unwrap().len(), 130);

    // query every page (10 items a page)
    let mut expression = Expression::default();
    expression.condition = Some("#pk = :pk".into());
    expression.names.insert("#pk".into(), "pk".into());
    expression.values.insert(":pk".into(), json!("q"));
    let q = QueryRequest {
        table: table.clone(),
        index: None,
        expression,
        page_size: Some(10),
        consistent_read: true,
    };
    let rows = db.query(&q).await.unwrap();
    assert_eq!(rows.len(), 25);
    assert_eq!(rows[24]["i"], 24);

    db.delete(&table, &json!({"pk": "q", "sk": "000"}))
        .await
        .unwrap();
    assert!(
        db.get(&table, &json!({"pk": "q", "sk": "000"}))
            .await
            .unwrap()
            .is_none()
    );

    let put = |sk: &str| {
        let item =
            serde_dynamo::aws_sdk_dynamodb_1::to_item(json!({"pk": "tx", "sk": sk})).unwrap();
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&table)
                    .set_item(Some(item))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    db.transact_write(vec![put("a"), put("b")]).await.unwrap();
    assert!(
        db.get(&table, &json!({"pk": "tx", "sk": "b"}))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn errors_are_classified() {
    let table = create_table("errors").await;
    let db = DynamoDb::shared().await;
    // a malformed expression is a validation error: poison
    let mut bad = update_expression(&json!({"a": 1})).unwrap();
    bad.update = Some("SET #nope = :a0".into());
    let req = UpdateRequest {
        table: None,
        key: json!({"pk": "x", "sk": "y"}),
        expression: bad,
    };
    let err = db.update(&table, &req).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Poison, "{err}");
    // a table that does not exist is a deployment problem: retried, not faulted
    let err = db
        .get("no-such-table", &json!({"pk": "x", "sk": "y"}))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.name(), "ResourceNotFoundException");
    // a failed condition that is not a stale-write guard is poison
    let mut guard = Expression::default();
    guard.condition = Some("attribute_exists(#pk)".into());
    guard.names.insert("#pk".into(), "pk".into());
    let err = db
        .put(&table, &json!({"pk": "n", "sk": "n"}), Some(&guard))
        .await
        .unwrap_err();
    assert_eq!(err.name(), "ConditionalCheckFailedException");
    assert_eq!(err.class(), ErrorClass::Poison);
    let _ = aws::config().await;
}

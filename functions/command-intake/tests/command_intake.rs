//! command-intake on its sample requests, against the local emulator (`make test`).

use command_intake::{Intake, MAX_BODY_BYTES};
use lambda_http::Body;
use lambda_stream::aws;
use lambda_stream::connectors::DynamoDb;
use lambda_stream::testing::create_table;
use serde_json::{Value, json};

fn sample(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../events/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn with_body(body: &str) -> lambda_http::Request {
    let mut event: Value = serde_json::from_str(&sample("command-intake.json")).unwrap();
    event["body"] = json!(body);
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

async fn call(intake: &Intake, request: lambda_http::Request) -> (u16, Value) {
    let response = intake.handle(request).await;
    let body = match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    (response.status().as_u16(), body)
}

#[tokio::test]
async fn commands_are_sequenced_and_repeated_request_ids_write_nothing() {
    let table = create_table("commands").await;
    let intake = Intake::new(aws::dynamodb().await.clone(), &table);
    let request = || lambda_http::request::from_str(&sample("command-intake.json")).unwrap();

    let (status, body) = call(&intake, request()).await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"requestId": "req-0001", "stream": "thing#t1", "sequence": 1, "duplicate": false})
    );

    let (status, body) = call(&intake, request()).await;
    assert_eq!(status, 202);
    assert_eq!(body["sequence"], 1);
    assert_eq!(body["duplicate"], true);

    let next = r#"{"type":"thing","command":"update-thing","requestId":"req-0002","data":{"id":"t1","name":"v2"}}"#;
    let (status, body) = call(&intake, with_body(next)).await;
    assert_eq!((status, body["sequence"].clone()), (202, json!(2)));

    let stream = DynamoDb::shared()
        .await
        .get(&table, &json!({"pk": "thing#t1", "sk": "stream"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stream["sequence"], 2);
    assert_eq!(stream["command"], "update-thing");
    assert_eq!(stream["data"]["name"], "v2");
    assert_eq!(stream["discriminator"], "command");
}

// Concurrent commands: DynamoDB commits a transaction conditional on `sequence = n` at most once
// per n. moto's server does not lock its tables between threads, so that guarantee cannot be
// tested against it; tests/races.rs tests how losing such a race is handled, with mocks.

#[tokio::test]
async fn bad_bodies_get_400_naming_the_problem_and_write_nothing() {
    let table = create_table("commands").await;
    let intake = Intake::new(aws::dynamodb().await.clone(), &table);
    let bad = lambda_http::request::from_str(&sample("command-intake-bad.json")).unwrap();
    let cases = [
        (bad, "`requestId` is missing"),
        (with_body("{not json"), "not valid JSON"),
        (with_body("[1,2]"), "must be a JSON object"),
        (with_body(""), "empty"),
        (
            with_body(r#"{"type":5,"command":"c","requestId":"r"}"#),
            "`type` must be a string",
        ),
        (
            with_body(r#"{"type":"t","command":"c","requestId":"r","data":[1]}"#),
            "`data` must be a JSON object",
        ),
        (
            with_body(r#"{"type":"t","command":"c","requestId":"r","data":{"id":5}}"#),
            "`data.id` must be a string",
        ),
        (
            with_body(&format!(
                r#"{{"type":"t","command":"c","requestId":"r","pad":"{}"}}"#,
                "x".repeat(MAX_BODY_BYTES)
            )),
            "the limit is",
        ),
    ];
    for (request, problem) in cases {
        let (status, body) = call(&intake, request).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(problem),
            "{body} should name {problem}"
        );
    }
    let scan = aws::dynamodb()
        .await
        .scan()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    assert_eq!(scan.count, 0);
}

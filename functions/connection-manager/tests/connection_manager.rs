//! The connection manager against a local upstream that streams, stalls, drops and repeats
//! messages, with the token in SSM and the ingest table in the local emulator (`make test`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connection_manager::{Handover, Manager, Run, Settings, message_key, token_from_ssm};
use futures::future::BoxFuture;
use lambda_stream::connectors::DynamoDb;
use lambda_stream::deadline::Deadline;
use lambda_stream::testing::*;
use lambda_stream::{Retry, StepError, aws};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Records handovers (our own interface; the Lambda call itself is tested with the connectors).
#[derive(Default)]
struct Recorded(Mutex<Vec<Run>>);

impl Handover for Recorded {
    fn hand_over<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<(), StepError>> {
        self.0.lock().unwrap().push(run.clone());
        Box::pin(async { Ok(()) })
    }
}

enum Step {
    Send(&'static str),
    SendOwned(String),
    Stall(Duration),
    Drop,
}

async fn write_chunk(socket: &mut TcpStream, data: &str) {
    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
    let _ = socket.write_all(chunk.as_bytes()).await;
}

/// Serves one scripted connection per accept; later connections hold without sending.
async fn upstream(listener: TcpListener, scripts: Vec<Vec<Step>>, auth: Arc<Mutex<Vec<String>>>) {
    let mut scripts = scripts.into_iter();
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some(line) = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        {
            auth.lock()
                .unwrap()
                .push(line.split_once(':').unwrap().1.trim().to_owned());
        }
        let script = scripts.next().unwrap_or_default();
        tokio::spawn(async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            for step in script {
                match step {
                    Step::Send(s) => write_chunk(&mut socket, s).await,
                    Step::SendOwned(s) => write_chunk(&mut socket, &s).await,
                    Step::Stall(d) => tokio::time::sleep(d).await,
                    Step::Drop => return,
                }
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
    }
}

#[tokio::test]
async fn streams_stalls_drops_and_repeats_store_each_message_once_then_hand_over() {
    let table = create_table("ingest").await;
    let ssm = aws_sdk_ssm::Client::new(aws::config().await);
    let parameter = format!("/{}/upstream-token", unique("test"));
    ssm.put_parameter()
        .name(&parameter)
        .value("s3cret")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let token = token_from_ssm(&ssm, &parameter).await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let auth = Arc::new(Mutex::new(Vec::new()));
    let scripts = vec![
        // streams, with a keepalive, a repeated message, and a message split across chunks
        vec![
            Step::Send("{\"n\":1}\n"),
            Step::Send("\n"),
            Step::Send("{\"n\":2}\n{\"n\":2}\n"),
            Step::Send("{\"n\""),
            Step::Send(":3}\n"),
            Step::Drop,
        ],
        // after the drop the upstream replays 1, then stalls
        vec![
            Step::Send("{\"n\":1}\n{\"n\":4}\n"),
            Step::Stall(Duration::from_millis(900)),
        ],
        // garbage: a line over the limit, then a good message
        vec![
            Step::SendOwned("x".repeat(3000)),
            Step::Send("tail of garbage\nplain text 5\n"),
        ],
    ];
    tokio::spawn(upstream(listener, scripts, auth.clone()));

    let settings = Settings {
        url_template: format!("http://127.0.0.1:{port}/streams/{{streamId}}"),
        table: table.clone(),
        handover_margin: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(400),
        max_message_bytes: 1000,
        reconnect: Retry {
            attempts: 100,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
        },
    };
    let handover = Arc::new(Recorded::default());
    let manager = Manager::new(
        settings,
        Some(token),
        DynamoDb::shared().await,
        handover.clone(),
    )
    .unwrap();
    let run = Run {
        stream_id: "upstream-1".into(),
        generation: 4,
    };
    let report = manager
        .run(
            &run,
            Deadline::after(Duration::from_secs(3), Duration::ZERO),
        )
        .await;

    assert_eq!(report.stored, 5, "{report:?}");
    assert!(report.duplicates >= 2, "{report:?}");
    assert_eq!(report.discarded, 1, "{report:?}");
    // three scripted connections, then silent ones that the stall detector re-opens
    assert!(report.connections >= 3, "{report:?}");
    assert_eq!(report.handed_over_to, Some(5));
    assert_eq!(
        *handover.0.lock().unwrap(),
        [Run {
            stream_id: "upstream-1".into(),
            generation: 5
        }]
    );
    assert!(auth.lock().unwrap().iter().all(|a| a == "Bearer s3cret"));
    assert_eq!(auth.lock().unwrap().len() as u64, report.connections);

    let db = DynamoDb::shared().await;
    for message in [
        "{\"n\":1}",
        "{\"n\":2}",
        "{\"n\":3}",
        "{\"n\":4}",
        "plain text 5",
    ] {
        let key = json!({"pk": "upstream-1", "sk": message_key(message)});
        let item = db
            .get(&table, &key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{message} not stored"));
        assert_eq!(item["message"], message);
        assert_eq!(item["discriminator"], "message");
    }
}

#[tokio::test]
async fn an_upstream_that_refuses_stops_without_handover() {
    emulator().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let settings = Settings {
        url_template: format!("http://127.0.0.1:{port}/{{streamId}}"),
        table: "unused".into(),
        handover_margin: Duration::ZERO,
        idle_timeout: Duration::from_millis(200),
        max_message_bytes: 100,
        reconnect: Retry::default(),
    };
    let handover = Arc::new(Recorded::default());
    let manager = Manager::new(settings, None, DynamoDb::shared().await, handover.clone()).unwrap();
    let run = Run {
        stream_id: "s".into(),
        generation: 0,
    };
    let report = manager
        .run(
            &run,
            Deadline::after(Duration::from_secs(2), Duration::ZERO),
        )
        .await;
    assert!(report.stopped.unwrap().contains("401"));
    assert!(handover.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn post_connections_starts_a_stream_and_rejects_bad_ids() {
    emulator().await;
    let handover = Arc::new(Recorded::default());
    let settings = Settings {
        url_template: String::new(),
        table: String::new(),
        handover_margin: Duration::ZERO,
        idle_timeout: Duration::from_secs(1),
        max_message_bytes: 10,
        reconnect: Retry::default(),
    };
    let manager = Manager::new(settings, None, DynamoDb::shared().await, handover.clone()).unwrap();
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/connection-manager-start.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let response = manager.handle(sample.clone(), Deadline::none()).await;
    assert_eq!(response["statusCode"], 202);
    assert_eq!(
        *handover.0.lock().unwrap(),
        [Run {
            stream_id: "upstream-1".into(),
            generation: 0
        }]
    );

    let mut bad = sample;
    bad["pathParameters"]["streamId"] = json!("../etc/passwd");
    let response = manager.handle(bad, Deadline::none()).await;
    assert_eq!(response["statusCode"], 400);
    assert!(response["body"].as_str().unwrap().contains("streamId"));
    // garbage invocations end cleanly, saying why
    let response = manager
        .handle(json!({"hello": "world"}), Deadline::none())
        .await;
    assert!(response["stopped"].as_str().unwrap().contains("not a run"));
}

#[tokio::test]
async fn a_run_invoked_at_its_deadline_hands_over_at_once() {
    emulator().await;
    let handover = Arc::new(Recorded::default());
    let settings = Settings {
        url_template: "http://127.0.0.1:9/{streamId}".into(),
        table: String::new(),
        handover_margin: Duration::ZERO,
        idle_timeout: Duration::from_secs(1),
        max_message_bytes: 10,
        reconnect: Retry::default(),
    };
    let manager = Manager::new(settings, None, DynamoDb::shared().await, handover.clone()).unwrap();
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/connection-manager-run.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let report = manager
        .handle(sample, Deadline::after(Duration::ZERO, Duration::ZERO))
        .await;
    assert_eq!(report["connections"], 0);
    assert_eq!(report["handedOverTo"], 4);
    assert_eq!(
        *handover.0.lock().unwrap(),
        [Run {
            stream_id: "upstream-1".into(),
            generation: 4
        }]
    );
}

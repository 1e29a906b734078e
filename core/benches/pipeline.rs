//! A 5,000-record Kinesis batch of ~1 KB events: the whole handler (lenient per-record parse,
//! `from_kinesis`, event-type filter, map to an update request, in-memory sink, outcome and
//! response) against the floor (deserializing the Lambda event and decoding each record's data
//! into an `Event`, nothing else). Read the two as a ratio from the same run.
//!
//! Publishing: the wire format (compression) against plain serialization (`bench_wire`).
//!
//! The same pipeline guarded by an idempotency store (in memory, so what is measured is the
//! guard's own work: a claim per unit, the settling pass), on a first delivery and on a
//! redelivery of the whole batch (every unit completed, found in the container's cache).

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::kinesis::KinesisEvent;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lambda_stream::idempotency::Idempotency;
use lambda_stream::sources;
use lambda_stream::sources::KinesisRecords;
use lambda_stream::testing::{MemoryFaults, MemoryIdempotency, context, to_kinesis_records};
use lambda_stream::{Event, Handler, IntoPipeline, Pipeline, StepError, UnitOfWork};
use serde_json::{Map, Value, json};

// The allocator a Lambda binary of ours uses (see functions/); glibc malloc spends a third of
// this batch in free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 5_000;

/// What `update` will take: key, expression and aliased values.
struct UpdateRequest {
    pk: String,
    sk: &'static str,
    expression: String,
    values: Map<String, Value>,
}

fn to_update_request(uow: UnitOfWork) -> Result<UnitOfWork<UpdateRequest>, StepError> {
    let event = uow.event();
    let thing = event
        .entity("thing")
        .and_then(Value::as_object)
        .ok_or_else(|| StepError::poison_msg("no thing"))?;
    let pk = thing
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| StepError::poison_msg("no thing.id"))?
        .to_owned();
    let mut expression = String::with_capacity(16 * thing.len());
    let mut values = Map::new();
    expression.push_str("SET ");
    for (i, (name, value)) in thing.iter().enumerate() {
        if i > 0 {
            expression.push_str(", ");
        }
        expression.push('#');
        expression.push_str(name);
        expression.push_str(" = :");
        expression.push_str(name);
        values.insert(name.clone(), value.clone());
    }
    values.insert("timestamp".into(), Value::from(event.timestamp));
    Ok(uow.with(UpdateRequest {
        pk,
        sk: "thing",
        expression,
        values,
    }))
}

fn events() -> Vec<Event> {
    (0..RECORDS)
        .map(|i| {
            let event_type = if i % 10 == 0 { "other-created" } else { "thing-updated" };
            let mut thing = json!({
                "id": format!("thing-{}", i % 500),
                "name": format!("widget number {i}"),
                "description": "a reasonably long description of the thing that keeps going for a while",
                "category": "hardware",
                "price": 1999,
                "currency": "EUR",
                "stock": i,
                "active": true,
                "tags": ["red", "large", "sale"],
                "dimensions": {"width": 10.5, "height": 20.25, "depth": 3},
                "supplier": {"id": "sup-42", "name": "Acme Components Ltd", "country": "DE"},
                "createdBy": "user-1234",
                "updatedBy": "user-5678",
                "notes": "x".repeat(470),
            });
            thing["sku"] = json!(format!("SKU-{i:08}"));
            Event::new(format!("evt-{i}"), event_type, 1_700_000_000_000 + i as i64)
                .with_partition_key(format!("thing-{}", i % 500))
                .with_entity("thing", thing)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let bytes = serde_json::to_vec(&to_kinesis_records(&events)).unwrap();
    let avg = serde_json::to_vec(&events[1]).unwrap().len();
    eprintln!(
        "batch: {RECORDS} records, event ~{avg} bytes, Lambda payload {} bytes",
        bytes.len()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink: Arc<Mutex<Vec<UpdateRequest>>> = Arc::new(Mutex::new(Vec::with_capacity(RECORDS)));
    let materialize = |sink: &Arc<Mutex<Vec<UpdateRequest>>>| {
        let s = sink.clone();
        Pipeline::new("materialize-thing")
            .on_event_type(["thing-created", "thing-updated"])
            .map(to_update_request)
            .then(move |uow: UnitOfWork<UpdateRequest>| {
                let s = s.clone();
                async move {
                    Ok::<_, StepError>(uow.map_state(|state| s.lock().unwrap().push(state)))
                }
            })
    };
    let handler = Handler::builder(MemoryFaults::default())
        .pipeline(materialize(&sink))
        .build()
        .unwrap();
    // the same handler printing every metrics family per invocation (to a sink that keeps
    // nothing, so what is measured is counting and rendering)
    let metered = Handler::builder(MemoryFaults::default())
        .settings(&lambda_stream::Settings::from_vars(|v| {
            (v == "METRICS").then(|| "*".to_owned())
        }))
        .pipeline(materialize(&sink))
        .metrics_to(Arc::new(Mutex::new(std::io::sink())))
        .build()
        .unwrap();
    let guarded = |cache: usize| {
        let guard = Idempotency::new(MemoryIdempotency::default()).cache(cache);
        Handler::builder(MemoryFaults::default())
            .pipeline(materialize(&sink).into_pipeline().idempotent(guard))
            .build()
            .unwrap()
    };
    let ctx = context(Duration::from_secs(900));

    let mut group = c.benchmark_group("kinesis-5000x1KB");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(20);
    group.bench_function("floor: deserialize + decode", |b| {
        b.iter(|| {
            let event: KinesisEvent = serde_json::from_slice(black_box(&bytes)).unwrap();
            let decoded: Vec<Event> = event
                .records
                .iter()
                .map(|r| serde_json::from_slice(&r.kinesis.data.0).unwrap())
                .collect();
            black_box(decoded)
        })
    });
    group.bench_function("pipeline: handler end to end", |b| {
        b.iter(|| {
            let batch: KinesisRecords = serde_json::from_slice(black_box(&bytes)).unwrap();
            let response = rt
                .block_on(handler.handle::<sources::Kinesis>(batch, &ctx))
                .unwrap();
            assert!(response.batch_item_failures.is_empty());
            let written = std::mem::take(&mut *sink.lock().unwrap());
            assert_eq!(written.len(), RECORDS * 9 / 10);
            black_box((
                written[0].pk.len(),
                written[0].sk,
                written[0].expression.len(),
                written[0].values.len(),
            ))
        })
    });
    group.bench_function("pipeline with metrics (METRICS=*)", |b| {
        b.iter(|| {
            let batch: KinesisRecords = serde_json::from_slice(black_box(&bytes)).unwrap();
            let response = rt
                .block_on(metered.handle::<sources::Kinesis>(batch, &ctx))
                .unwrap();
            assert!(response.batch_item_failures.is_empty());
            let written = std::mem::take(&mut *sink.lock().unwrap());
            assert_eq!(written.len(), RECORDS * 9 / 10);
            black_box(written.len())
        })
    });
    group.bench_function("guarded: first delivery (claim + settle)", |b| {
        b.iter_batched(
            || guarded(0),
            |handler| {
                let batch: KinesisRecords = serde_json::from_slice(black_box(&bytes)).unwrap();
                let response = rt
                    .block_on(handler.handle::<sources::Kinesis>(batch, &ctx))
                    .unwrap();
                assert!(response.batch_item_failures.is_empty());
                let written = std::mem::take(&mut *sink.lock().unwrap());
                assert_eq!(written.len(), RECORDS * 9 / 10);
                black_box(written.len())
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let redelivered = guarded(RECORDS);
    group.bench_function("guarded: redelivery (all completed, cached)", |b| {
        b.iter(|| {
            let batch: KinesisRecords = serde_json::from_slice(black_box(&bytes)).unwrap();
            let response = rt
                .block_on(redelivered.handle::<sources::Kinesis>(batch, &ctx))
                .unwrap();
            assert!(response.batch_item_failures.is_empty());
            let written = std::mem::take(&mut *sink.lock().unwrap()).len();
            black_box(written)
        })
    });
    group.finish();
}

/// Publishing: each event's JSON as the batch connectors write it (`Wire`, compression on at
/// aws-lambda-stream's 10 KB) against plain serialization, for the usual ~1 KB event (the fast
/// path: nothing can be over the threshold) and for a ~40 KB event whose big field is
/// compressed.
fn bench_wire(c: &mut Criterion) {
    use lambda_stream::connectors::Wire;
    let small = events();
    let big: Vec<Event> = (0..100)
        .map(|i| {
            Event::new(format!("b{i}"), "thing-updated", i as i64)
                .with_partition_key(format!("t{}", i % 10))
                .with_entity(
                    "thing",
                    json!({"id": format!("t{i}"), "notes": format!("{i} ").repeat(10_000)}),
                )
        })
        .collect();
    let wire = Wire::default();
    for (name, batch) in [("wire-5000x1KB", &small), ("wire-100x40KB", &big)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(batch.len() as u64));
        group.bench_function("floor: serde_json::to_string", |b| {
            b.iter(|| {
                let n: usize = batch
                    .iter()
                    .map(|e| serde_json::to_string(black_box(e)).unwrap().len())
                    .sum();
                black_box(n)
            })
        });
        group.bench_function("Wire::json (compression at 10 KB)", |b| {
            b.iter(|| {
                let n: usize = batch
                    .iter()
                    .map(|e| wire.json(black_box(e), None).unwrap().len())
                    .sum();
                black_box(n)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench, bench_wire);
criterion_main!(benches);

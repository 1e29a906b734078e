use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use lambda_stream::sources::SqsBatch;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_stream::logging::init();
    let handler = Arc::new(fault_monitor::from_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsBatch>| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, lambda_runtime::Error>(handler.sqs(event.payload, &event.context).await?) }
    }))
    .await
}

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use lambda_stream::sources::DynamoDbBatch;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_stream::logging::init();
    let handler = Arc::new(trigger::from_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<DynamoDbBatch>| {
        let handler = Arc::clone(&handler);
        async move {
            Ok::<_, lambda_runtime::Error>(handler.dynamodb(event.payload, &event.context).await?)
        }
    }))
    .await
}

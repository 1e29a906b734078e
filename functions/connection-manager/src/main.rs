use std::sync::Arc;

use connection_manager::{Manager, SelfInvoke, Settings, token_from_ssm};
use lambda_runtime::{LambdaEvent, service_fn};
use lambda_stream::Deadline;
use lambda_stream::connectors::{DynamoDb, Lambda};
use serde_json::Value;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_stream::logging::init();
    let token = match std::env::var("UPSTREAM_TOKEN_PARAMETER") {
        Ok(name) if !name.is_empty() => {
            let ssm = aws_sdk_ssm::Client::new(lambda_stream::aws::config().await);
            Some(token_from_ssm(&ssm, &name).await?)
        }
        _ => None,
    };
    let handover = Arc::new(SelfInvoke {
        lambda: Lambda::shared().await,
        function: std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
    });
    let manager = Arc::new(Manager::new(
        Settings::from_env(),
        token,
        DynamoDb::shared().await,
        handover,
    )?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let manager = Arc::clone(&manager);
        async move {
            // the manager applies its own handover margin
            let deadline = Deadline::from_context(&event.context, std::time::Duration::ZERO);
            Ok::<_, lambda_runtime::Error>(manager.handle(event.payload, deadline).await)
        }
    }))
    .await
}

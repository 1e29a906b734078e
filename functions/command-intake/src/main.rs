use std::sync::Arc;

use lambda_http::{Request, service_fn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_stream::logging::init();
    let intake = Arc::new(command_intake::Intake::from_env().await);
    lambda_http::run(service_fn(move |request: Request| {
        let intake = Arc::clone(&intake);
        async move { Ok::<_, lambda_http::Error>(intake.handle(request).await) }
    }))
    .await
}

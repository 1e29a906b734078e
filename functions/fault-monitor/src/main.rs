use lambda_stream::sources::Sqs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_stream::logging::init();
    lambda_stream::run::<Sqs>(fault_monitor::from_env().await?).await
}

//! The Lambda sink: an invocation per unit.

use serde_json::Value;

use crate::connectors::Lambda;
use crate::pipeline::{Pipeline, Step};
use crate::settings::Settings;
use crate::uow::UnitOfWork;

/// An invocation (for [`Invoke`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaCall {
    /// The function's name or ARN.
    pub function: String,
    /// The payload.
    pub payload: Value,
    /// Queue it (`Event`) rather than wait for the response.
    pub asynchronous: bool,
}

/// Invokes a function per unit's [`LambdaCall`], `INVOKE_PARALLEL` at once; the state becomes
/// the response (`null` for asynchronous invocations).
#[derive(Debug, Clone)]
pub struct Invoke(pub Lambda);

impl Step<UnitOfWork<LambdaCall>> for Invoke {
    type Output = UnitOfWork<Value>;

    fn attach(self, pipeline: Pipeline<UnitOfWork<LambdaCall>>) -> Pipeline<UnitOfWork<Value>> {
        let lambda = self.0;
        pipeline.then_with_settings(Settings::invoke_parallel, move |_| {
            let lambda = lambda.clone();
            move |uow: UnitOfWork<LambdaCall>| {
                let lambda = lambda.clone();
                async move {
                    let call = &uow.state;
                    let response = if call.asynchronous {
                        lambda.invoke_async(&call.function, &call.payload).await?;
                        Value::Null
                    } else {
                        lambda.invoke(&call.function, &call.payload).await?
                    };
                    Ok(uow.with(response))
                }
            }
        })
    }
}

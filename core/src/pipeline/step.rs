//! Steps as values: anything that can attach itself to a pipeline.

use super::Pipeline;
use crate::uow::Work;

/// A step, as a value: it attaches itself to a pipeline of `T` and gives a pipeline of its
/// output. The sinks are steps; a step or sink of your own, written outside this crate with
/// the pipeline's public methods, is used exactly like them, with [`Pipeline::pipe`].
///
/// ```
/// use lambda_stream::{Pipeline, Settings, Step, StepError, UnitOfWork};
///
/// /// A sink of our own: counts what reaches it, as many keys at once as `PUBLISH_PARALLEL`.
/// #[derive(Clone, Default)]
/// struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
///
/// impl Step<UnitOfWork> for Count {
///     type Output = UnitOfWork;
///     fn attach(self, pipeline: Pipeline<UnitOfWork>) -> Pipeline<UnitOfWork> {
///         pipeline.then_with_settings(Settings::publish_parallel, move |_settings| {
///             let count = self.clone();
///             move |uow: UnitOfWork| {
///                 count.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///                 async move { Ok::<_, StepError>(uow) }
///             }
///         })
///     }
/// }
///
/// let p = Pipeline::new("counted").on_event_type("thing-created").pipe(Count::default());
/// # let _ = p;
/// ```
pub trait Step<T: Work> {
    /// What flows out of the step.
    type Output: Work;
    /// Adds the step at the end of `pipeline`.
    fn attach(self, pipeline: Pipeline<T>) -> Pipeline<Self::Output>;
}

impl<T: Work> Pipeline<T> {
    /// Adds a step given as a value (a sink, a step of your own).
    pub fn pipe<S: Step<T>>(self, step: S) -> Pipeline<S::Output> {
        step.attach(self)
    }
}

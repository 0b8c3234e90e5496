//! Classification: turning a call's result into an [`Outcome`].
//!
//! A layer that reacts to failures needs two answers about every result: *what
//! happened* (did the server succeed, fail, or tell us nothing about its
//! health?) and *what may be done about it* (is another attempt worth it, and
//! did the server push back?). tower-http's `classify` module answers the first;
//! [`Outcome`] carries both, so the breaker, retry and the balancer read one
//! classification instead of each re-parsing the response.
//!
//! - [`HttpClassifier`]: 5xx and 429 are failures, 502/503/504/429 and transient
//!   transport errors are retryable, other 4xx are ignored; all configurable.
//! - [`GrpcClassifier`]: the `grpc-status` of trailers-only responses (and of
//!   trailers, for layers that observe the body); `UNAVAILABLE`,
//!   `RESOURCE_EXHAUSTED` and `ABORTED` retryable by default.
//! - [`ClassifyFn`]: any closure.
//!
//! Classifying a success never allocates.
//!
//! # Example
//!
//! ```
//! use mesh_core::classify::{Classify, HttpClassifier};
//! use mesh_core::{BoxError, Outcome};
//!
//! let classifier = HttpClassifier::default();
//! let ok: Result<http::Response<()>, BoxError> = Ok(http::Response::new(()));
//! assert_eq!(classifier.classify(&ok), Outcome::Success);
//!
//! let busy: Result<_, BoxError> = Ok(http::Response::builder()
//!     .status(503)
//!     .header("retry-after", "2")
//!     .body(())
//!     .unwrap());
//! let outcome = classifier.classify(&busy);
//! assert!(outcome.is_retryable());
//! assert_eq!(outcome.pushback().and_then(|p| p.delay()), Some(std::time::Duration::from_secs(2)));
//! ```

mod error;
mod grpc;
mod http;

pub use self::error::{as_dyn_error, is_transient_error, is_unsent_error};
pub use self::grpc::{GrpcClassifier, GrpcCode, GrpcCodeSet};
pub use self::http::{DefaultHttpClassifier, HttpClassifier, StatusSet};

use std::fmt;
use std::sync::Arc;

use crate::outcome::Outcome;

/// Turns the result of one call into an [`Outcome`].
///
/// Implemented by [`HttpClassifier`], [`GrpcClassifier`], [`ClassifyFn`], and by
/// references and `Arc`s of any classifier.
pub trait Classify<Res, Err> {
    /// What `result` says about the server that produced it.
    fn classify(&self, result: &Result<Res, Err>) -> Outcome;
}

impl<C, Res, Err> Classify<Res, Err> for &C
where
    C: Classify<Res, Err> + ?Sized,
{
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        (**self).classify(result)
    }
}

impl<C, Res, Err> Classify<Res, Err> for Arc<C>
where
    C: Classify<Res, Err> + ?Sized,
{
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        (**self).classify(result)
    }
}

/// A classifier made from a closure; build one with [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

/// Classifies with a closure `Fn(&Result<Res, Err>) -> Outcome`.
///
/// ```
/// use mesh_core::classify::{classify_fn, Classify};
/// use mesh_core::Outcome;
///
/// // A service whose `Err(true)` means "try again".
/// let c = classify_fn(|r: &Result<u32, bool>| match r {
///     Ok(_) => Outcome::Success,
///     Err(true) => Outcome::retryable(),
///     Err(false) => Outcome::fatal(),
/// });
/// assert!(c.classify(&Err(true)).is_retryable());
/// ```
pub const fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn { f }
}

impl<F, Res, Err> Classify<Res, Err> for ClassifyFn<F>
where
    F: Fn(&Result<Res, Err>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, Err>) -> Outcome {
        (self.f)(result)
    }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}

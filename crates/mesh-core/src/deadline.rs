//! [`CallDeadline`]: a logical call's deadline, carried to the layers below
//! the retry in the request's extensions.

use tokio::time::Instant;

/// When the whole logical call must end, across every attempt.
///
/// The retry layer puts it in each attempt's request extensions when a
/// deadline is configured, so a layer below it (the ready-made stack's
/// per-attempt timeout) can bound an attempt, *and its response body*, by
/// the deadline as well as by its own limit, and fail it with the error
/// that names which limit fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CallDeadline(pub Instant);

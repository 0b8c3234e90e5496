//! [`RetryPolicy`]: what is retried, when, and how long to wait.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response};
use mesh_core::backoff::BackoffSession;
use mesh_core::classify::{Classify, DefaultHttpClassifier, as_dyn_error, is_unsent_error};
use mesh_core::config::InvalidConfig;
use mesh_core::pushback::Pushback;
use mesh_core::{AttemptError, BoxError, Outcome, ReportEndpoint, TriedEndpoints};
use tokio::time::Instant;

use crate::body::TryCloneBody;
use crate::budget::RetryBudget;
use crate::config::RetryConfig;
use crate::copy::{RetryRequest, clone_request};
use crate::error::{BudgetExhausted, DeadlineExceeded};
use crate::metrics::Metrics;
use mesh_core::log_limit::LogLimit;

/// Why a retryable failure was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUp {
    /// `max_retries` retries were made already.
    MaxRetries,
    /// The retry budget was spent.
    Budget,
    /// The delay would end too close to (or past) the deadline.
    Deadline,
    /// The server's pushback (`Retry-After`, `grpc-retry-pushback-ms`) asked
    /// for longer than [`RetryConfig::max_pushback`]: "not now", so the
    /// caller gets that response at once.
    Pushback,
    /// The request body was too large to keep for replay.
    BodyNotReplayable,
    /// The request never reached a server and was requeued
    /// [`RetryConfig::max_requeues`] times already (a never-sent failure is
    /// requeued, never retried after a backoff).
    MaxRequeues,
}

impl GiveUp {
    /// Every reason, in declaration order (`ALL[why as usize] == why`).
    pub const ALL: [GiveUp; 6] = [
        GiveUp::MaxRetries,
        GiveUp::Budget,
        GiveUp::Deadline,
        GiveUp::Pushback,
        GiveUp::BodyNotReplayable,
        GiveUp::MaxRequeues,
    ];

    /// A short, stable name (used as the `reason` label).
    pub const fn as_str(self) -> &'static str {
        match self {
            GiveUp::MaxRetries => "max_retries",
            GiveUp::Budget => "budget_exhausted",
            GiveUp::Deadline => "deadline",
            GiveUp::Pushback => "pushback_beyond_max",
            GiveUp::BodyNotReplayable => "body_not_replayable",
            GiveUp::MaxRequeues => "max_requeues",
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send the stored copy after this delay.
    Retry(Duration),
    /// Return the result: it is a success, not retryable, or we gave up.
    Stop(Option<GiveUp>),
}

enum GrpcMethod {
    Exact(String),
    Service(String),
}

/// Tells whether an attempt's error proves the request never reached a
/// server (see [`RetryPolicy::unsent_errors`]).
pub type UnsentErrors = fn(&(dyn std::error::Error + 'static)) -> bool;

/// What a policy is built from (the rest of [`Shared`] is derived or
/// counted).
struct Parts<C> {
    config: RetryConfig,
    classifier: C,
    budget: RetryBudget,
    unsent: UnsentErrors,
    service: Option<Arc<str>>,
    on_attempt: Option<AttemptHook>,
}

struct Shared<C> {
    config: RetryConfig,
    classifier: C,
    budget: RetryBudget,
    attempt_header: Option<HeaderName>,
    grpc_methods: Vec<GrpcMethod>,
    unsent: UnsentErrors,
    retries: AtomicU64,
    requeues: AtomicU64,
    /// The service the policy retries for (logs and the `service` label).
    service: Option<Arc<str>>,
    /// Registered at the first call, so that the policies a builder chain
    /// makes on the way (`with_classifier`, then `named`, ...) register no
    /// series of their own.
    metrics: std::sync::OnceLock<Metrics>,
    on_attempt: Option<AttemptHook>,
    /// Give-ups and retries logged at INFO: a few a second at most.
    give_up_log: LogLimit,
    retry_log: LogLimit,
}

/// What the services of one policy (every clone) did, since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RetryStats {
    /// Retries sent: attempts repeated after a failure the server may have
    /// seen, after a backoff.
    pub retries: u64,
    /// Requeues sent: attempts repeated at once, to another endpoint, after
    /// a failure that proved the request never reached a server.
    pub requeues: u64,
}

impl<C> Shared<C> {
    #[inline]
    fn metrics(&self) -> &Metrics {
        self.metrics
            .get_or_init(|| Metrics::new(self.service.as_deref()))
    }

    /// Counts a give-up and logs it at INFO (a few lines a second at most):
    /// the service, the reason and the attempts the request made.
    fn note_give_up(&self, why: GiveUp, retries: u32, requeues: u32) {
        self.metrics().give_up(why);
        if let Some(suppressed) = self.give_up_log.check() {
            tracing::info!(
                service = self.service.as_deref(),
                reason = why.as_str(),
                retries,
                requeues,
                max_retries = self.config.max_retries,
                suppressed,
                "retry: giving up ({why}) after {retries} retries and {requeues} requeues"
            );
        }
    }
}

/// Called with the result of every attempt a retry layer makes (its status,
/// or its error): for per-attempt metrics without a layer of their own. Set
/// with [`RetryPolicy::on_attempt`]; it runs inline, keep it short.
pub type AttemptHook =
    Arc<dyn Fn(Result<http::StatusCode, &(dyn std::error::Error + 'static)>) + Send + Sync>;

/// Safe, budgeted retries for HTTP and gRPC requests, as a
/// `tower::retry::Policy`.
///
/// The policy is a `tower::retry::Policy`, so it works inside plain
/// `tower::retry::Retry`:
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use mesh_retry::{RetryConfig, RetryPolicy};
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut config = RetryConfig::default();
/// config.backoff.base = Duration::from_millis(10);
/// let policy = RetryPolicy::new(config).unwrap();
///
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
/// let counter = calls.clone();
/// let inner = tower::service_fn(move |_req: http::Request<Full<Bytes>>| {
///     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     let status = if n == 0 { 503 } else { 200 };
///     async move {
///         Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap())
///     }
/// });
/// let mut svc = tower::retry::Retry::new(policy, inner);
/// let req = http::Request::get("http://users/1").body(Full::new(Bytes::new())).unwrap();
/// let res = svc.ready().await.unwrap().call(req).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
/// # }
/// ```
///
/// Inside `tower::retry::Retry` the policy cannot cut an attempt short at the
/// deadline (it only refuses retries that would pass it), and the first
/// attempt carries no [`TriedEndpoints`] unless the caller added one;
/// [`RetryLayer`](crate::RetryLayer) does both.
///
/// Clones share the configuration, the classifier and the budget; each clone
/// tower makes for a request carries that request's attempt count, start time
/// and backoff session (created, with fresh randomness, at its first retry).
pub struct RetryPolicy<C = DefaultHttpClassifier> {
    shared: Arc<Shared<C>>,
    /// Retries decided so far for this request.
    retries: u32,
    /// Requeues decided so far for this request.
    requeues: u32,
    /// The request itself may be retried (idempotent, or allowed): the copy
    /// kept for the next attempt may serve only requeues otherwise.
    pub(crate) may_retry: bool,
    start: Option<Instant>,
    // Boxed: drawn only on a retry, and kept out of the future's size.
    session: Option<Box<BackoffSession>>,
    give_up: Option<GiveUp>,
    /// The first attempt went out without a `TriedEndpoints` record: the
    /// retries' record is built at the first retry, starting from the
    /// endpoint the router reported back with the first attempt's result.
    pub(crate) pending_record: bool,
    /// The endpoint the router reported with the last result.
    pub(crate) first_pick: Option<u64>,
}

impl<C> Clone for RetryPolicy<C> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            retries: self.retries,
            requeues: self.requeues,
            may_retry: self.may_retry,
            start: self.start,
            session: self.session.clone(),
            give_up: self.give_up,
            pending_record: self.pending_record,
            first_pick: self.first_pick,
        }
    }
}

impl<C> fmt::Debug for RetryPolicy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("config", &self.shared.config)
            .field("budget", &self.shared.budget)
            .field("retries", &self.retries)
            .field("requeues", &self.requeues)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy<DefaultHttpClassifier> {
    /// A policy for `config`, classifying with the default
    /// [`HttpClassifier`](mesh_core::classify::HttpClassifier)
    /// (as the zero-sized [`DefaultHttpClassifier`], which the breaker and
    /// the router default to as well) and with a budget of its own. Fails if
    /// the config is invalid.
    pub fn new(config: RetryConfig) -> Result<Self, InvalidConfig> {
        Self::with_classifier(config, DefaultHttpClassifier)
    }
}

impl<C> RetryPolicy<C> {
    /// A policy for `config` that classifies with `classifier` (use
    /// `GrpcClassifier` for gRPC).
    pub fn with_classifier(config: RetryConfig, classifier: C) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let budget = RetryBudget::new(&config.budget);
        Ok(Self::from_parts(Parts {
            config,
            classifier,
            budget,
            unsent: is_unsent_error,
            service: None,
            on_attempt: None,
        }))
    }

    /// The same policy drawing from another (shared) budget.
    #[must_use]
    pub fn with_budget(self, budget: RetryBudget) -> Self
    where
        C: Clone,
    {
        self.rebuilt(|p| p.budget = budget)
    }

    /// The same policy telling never-sent failures with `unsent` instead of
    /// [`is_unsent_error`](mesh_core::classify::is_unsent_error): a failure
    /// for which it returns `true` is *requeued* (sent again at once, to
    /// another endpoint, whatever the method; see
    /// [`RetryConfig::max_requeues`]). Return `true` only for errors raised
    /// before any byte of the request could reach a server.
    /// mesh-stack adds its router's and breakers' refusals this way.
    #[must_use]
    pub fn unsent_errors(self, unsent: UnsentErrors) -> Self
    where
        C: Clone,
    {
        self.rebuilt(|p| p.unsent = unsent)
    }

    /// The same policy retrying for the service `service`: the name its
    /// give-up log lines and its metrics' `service` label carry. Use a
    /// bounded name (a service, not a URL).
    #[must_use]
    pub fn named(self, service: impl Into<Arc<str>>) -> Self
    where
        C: Clone,
    {
        self.rebuilt(|p| p.service = Some(service.into()))
    }

    /// The same policy calling `hook` with every attempt's status or error
    /// (mesh-stack counts its attempts this way).
    #[must_use]
    pub fn on_attempt(self, hook: AttemptHook) -> Self
    where
        C: Clone,
    {
        self.rebuilt(|p| p.on_attempt = Some(hook))
    }

    /// Reports an attempt's result to the [`on_attempt`](Self::on_attempt)
    /// hook, if any.
    #[inline]
    pub(crate) fn report_attempt<Res>(&self, result: &Result<Response<Res>, BoxError>) {
        if let Some(hook) = &self.shared.on_attempt {
            hook(match result {
                Ok(r) => Ok(r.status()),
                Err(e) => Err(&**e),
            });
        }
    }

    /// The service name given with [`named`](Self::named).
    pub fn service(&self) -> Option<&str> {
        self.shared.service.as_deref()
    }

    /// A new policy (fresh counts) from this one's parts, `change`d.
    fn rebuilt(&self, change: impl FnOnce(&mut Parts<C>)) -> Self
    where
        C: Clone,
    {
        let shared = &*self.shared;
        let mut parts = Parts {
            config: shared.config.clone(),
            classifier: shared.classifier.clone(),
            budget: shared.budget.clone(),
            unsent: shared.unsent,
            service: shared.service.clone(),
            on_attempt: shared.on_attempt.clone(),
        };
        change(&mut parts);
        Self::from_parts(parts)
    }

    fn from_parts(parts: Parts<C>) -> Self {
        let Parts {
            config,
            classifier,
            budget,
            unsent,
            service,
            on_attempt,
        } = parts;
        let attempt_header = if config.attempt_header.is_empty() {
            None
        } else {
            HeaderName::from_bytes(config.attempt_header.as_bytes()).ok()
        };
        let grpc_methods = config
            .idempotent_grpc_methods
            .iter()
            .map(|m| match m.strip_suffix('*') {
                Some(prefix) => GrpcMethod::Service(prefix.to_owned()),
                None => GrpcMethod::Exact(m.clone()),
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                config,
                classifier,
                budget,
                attempt_header,
                grpc_methods,
                unsent,
                retries: AtomicU64::new(0),
                requeues: AtomicU64::new(0),
                metrics: std::sync::OnceLock::new(),
                service,
                on_attempt,
                give_up_log: LogLimit::default(),
                retry_log: LogLimit::default(),
            }),
            retries: 0,
            requeues: 0,
            may_retry: true,
            start: None,
            session: None,
            give_up: None,
            pending_record: false,
            first_pick: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.shared.config
    }

    /// The budget, shared by every clone.
    pub fn budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.shared.classifier
    }

    /// The retries and requeues sent by every service of this policy (all
    /// clones share the counts).
    pub fn stats(&self) -> RetryStats {
        RetryStats {
            retries: self.shared.retries.load(Ordering::Relaxed),
            requeues: self.shared.requeues.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn attempt_header(&self) -> Option<&HeaderName> {
        self.shared.attempt_header.as_ref()
    }

    /// Why this request's policy last gave up on a retryable failure.
    pub fn gave_up(&self) -> Option<GiveUp> {
        self.give_up
    }

    /// Whether `req` may be sent twice: an idempotent method, an
    /// `Idempotency-Key` header, a gRPC method marked idempotent, or any
    /// request when `retry_non_idempotent` is set.
    #[inline]
    pub fn is_retryable_request<B>(&self, req: &Request<B>) -> bool {
        let m = req.method();
        if m == Method::GET
            || m == Method::HEAD
            || m == Method::OPTIONS
            || m == Method::PUT
            || m == Method::DELETE
            || m == Method::TRACE
        {
            return true;
        }
        self.is_retryable_other(req)
    }

    /// [`is_retryable_request`](Self::is_retryable_request) for the other
    /// methods: out of line, so that the common case stays small.
    #[inline(never)]
    fn is_retryable_other<B>(&self, req: &Request<B>) -> bool {
        let m = req.method();
        let shared = &*self.shared;
        if shared.config.retry_non_idempotent || req.headers().contains_key("idempotency-key") {
            return true;
        }
        if m == Method::POST && !shared.grpc_methods.is_empty() && is_grpc(req) {
            let path = req.uri().path();
            return shared.grpc_methods.iter().any(|g| match g {
                GrpcMethod::Exact(p) => p == path,
                GrpcMethod::Service(prefix) => path.starts_with(prefix.as_str()),
            });
        }
        false
    }

    // ===== the request's life =====

    /// Called once per logical request, before its first attempt: counts it
    /// in the budget and starts the deadline clock.
    #[inline]
    pub(crate) fn begin(&mut self) {
        self.shared.budget.deposit();
        self.shared.metrics().request();
        if self.shared.config.deadline.is_some() {
            self.start = Some(Instant::now());
        }
    }

    /// Whether the retries of `req` (a request that may be retried) need a
    /// [`TriedEndpoints`] record built for them: when tracking and the caller
    /// put none in the request. The first attempt goes out without one (no
    /// allocation for requests that succeed at once); the router reports
    /// where it went with a failed result ([`mesh_core::TriedEndpoint`],
    /// [`mesh_core::AttemptError`]), and [`take_report`](Self::take_report)
    /// keeps that for the record.
    #[inline]
    pub(crate) fn needs_record<B>(&self, req: &Request<B>) -> bool {
        self.shared.config.track_tried_endpoints
            && req.extensions().get::<TriedEndpoints>().is_none()
    }

    /// Takes the router's report of where an attempt went out of its
    /// result, so the caller never sees it, and keeps it for the retries'
    /// record.
    #[inline]
    pub(crate) fn take_report<Res: ReportEndpoint>(&mut self, result: &mut Result<Res, BoxError>) {
        // In place: the response (its body wrappers included) is not moved.
        match result {
            Ok(response) => {
                if let Some(id) = response.take_reported_endpoint() {
                    self.first_pick = Some(id);
                }
            }
            Err(error) => {
                if error.is::<AttemptError>() {
                    // `fmt::Error` is zero-sized: a placeholder that does not allocate.
                    let wrapped = std::mem::replace(error, Box::new(fmt::Error));
                    let (id, inner) = AttemptError::split(wrapped);
                    *error = inner;
                    if id.is_some() {
                        self.first_pick = id;
                    }
                }
            }
        }
    }

    /// The copy kept for the next attempt, or `None` when the request can
    /// be neither retried nor requeued.
    #[inline]
    pub(crate) fn copy<B: TryCloneBody>(&mut self, req: &Request<B>) -> Option<Request<B>> {
        self.may_retry =
            self.retries < self.shared.config.max_retries && self.is_retryable_request(req);
        if !self.may_retry && self.requeues >= self.shared.config.max_requeues {
            return None;
        }
        clone_request(req)
    }

    /// Whether another attempt may follow the next one: keep the copy.
    #[inline]
    pub(crate) fn more_attempts(&self) -> bool {
        let config = &self.shared.config;
        (self.may_retry && self.retries < config.max_retries) || self.requeues < config.max_requeues
    }

    /// The absolute deadline, if there is one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        Some(instant_after(self.start?, self.shared.config.deadline?))
    }

    /// Decides what follows an attempt whose result is `result`; on a retry,
    /// stamps the attempt header on `req` (the copy to be sent). The clock is
    /// read only for a retryable failure with a deadline.
    #[inline]
    pub(crate) fn decide<R, Res, E>(
        &mut self,
        req: &mut R,
        result: &Result<Response<Res>, E>,
    ) -> Decision
    where
        R: RetryRequest,
        C: Classify<Response<Res>, E>,
        E: 'static,
    {
        let outcome = self.shared.classifier.classify(result);
        if let Err(e) = result
            && self.shared.config.max_requeues > 0
            && as_dyn_error(e).is_some_and(self.shared.unsent)
        {
            return self.decide_requeue(req, result, outcome);
        }
        if !outcome.is_retryable() || !self.may_retry {
            return Decision::Stop(None);
        }
        self.decide_retryable(req, result, outcome)
    }

    /// [`decide`](Self::decide) for a failure that proves the request never
    /// reached a server: send it again at once, whatever its method, to
    /// another endpoint (the tried-endpoints record steers the router), paid
    /// from the budget like a retry and counted apart from retries. No
    /// backoff: no server saw it, so none is being overloaded by it.
    #[cold]
    #[inline(never)]
    fn decide_requeue<R, Res, E>(
        &mut self,
        req: &mut R,
        result: &Result<Response<Res>, E>,
        outcome: Outcome,
    ) -> Decision
    where
        R: RetryRequest,
        E: 'static,
    {
        let attempt = self.retries + self.requeues + 1;
        let give_up = |this: &mut Self, why: GiveUp| {
            tracing::debug!(
                attempt,
                reason = why.as_str(),
                error = %Reason { outcome: &outcome, result },
                "not requeueing a request that never reached a server"
            );
            this.stop(why)
        };
        if self.requeues >= self.shared.config.max_requeues {
            return give_up(self, GiveUp::MaxRequeues);
        }
        if !req.can_replay() {
            return give_up(self, GiveUp::BodyNotReplayable);
        }
        if let Some(deadline) = self.deadline()
            && self.shared.config.min_attempt_time
                > deadline.saturating_duration_since(Instant::now())
        {
            return give_up(self, GiveUp::Deadline);
        }
        if !self.shared.budget.withdraw() {
            return give_up(self, GiveUp::Budget);
        }
        self.requeues += 1;
        let next = attempt + 1;
        self.stamp(req, next);
        self.shared.metrics().requeue();
        self.shared.requeues.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            attempt = next,
            reason = %Reason { outcome: &outcome, result },
            "requeueing request: it never reached a server"
        );
        Decision::Retry(Duration::ZERO)
    }

    /// Ends the request's attempts for `why`: counted, and kept for the
    /// caller's give-up event.
    fn stop(&mut self, why: GiveUp) -> Decision {
        self.note_give_up(why);
        Decision::Stop(Some(why))
    }

    /// Counts (and logs) a give-up for `why` that ends the request from
    /// outside a decision (the deadline passed during an attempt).
    pub(crate) fn count_give_up(&self, why: GiveUp) {
        self.shared.note_give_up(why, self.retries, self.requeues);
    }

    /// Counts a give-up for `why` and keeps it for the caller's event.
    fn note_give_up(&mut self, why: GiveUp) {
        self.shared.note_give_up(why, self.retries, self.requeues);
        self.give_up = Some(why);
    }

    /// Stamps attempt number `next` on the copy and, at the first repeat,
    /// puts in the tried-endpoints record, starting from where the first
    /// attempt went; later copies are cloned from this one and share it.
    fn stamp<R: RetryRequest>(&mut self, req: &mut R, next: u32) {
        if let Some(name) = &self.shared.attempt_header {
            req.headers_mut()
                .insert(name.clone(), HeaderValue::from(next));
        }
        if std::mem::take(&mut self.pending_record) {
            let tried = TriedEndpoints::new();
            if let Some(id) = self.first_pick.take() {
                tried.record_id(id);
            }
            req.extensions_mut().insert(tried);
        }
    }

    /// [`decide`](Self::decide) for a retryable failure: kept out of line so
    /// that the success path stays small.
    #[inline(never)]
    fn decide_retryable<R, Res, E>(
        &mut self,
        req: &mut R,
        result: &Result<Response<Res>, E>,
        outcome: Outcome,
    ) -> Decision
    where
        R: RetryRequest,
        E: 'static,
    {
        let attempt = self.retries + self.requeues + 1;
        let give_up = |this: &mut Self, why: GiveUp| {
            tracing::debug!(attempt, reason = why.as_str(), "not retrying");
            this.stop(why)
        };
        if self.retries >= self.shared.config.max_retries {
            return give_up(self, GiveUp::MaxRetries);
        }
        if !req.can_replay() {
            return give_up(self, GiveUp::BodyNotReplayable);
        }
        let pushback = match outcome.pushback() {
            Some(Pushback::After(p)) => p,
            _ => Duration::ZERO,
        };
        let max_pushback = self.shared.config.max_pushback;
        if pushback > max_pushback {
            // The server said "not now": waiting that long would hold the
            // caller for it, so the caller gets this response at once.
            tracing::debug!(
                attempt,
                reason = GiveUp::Pushback.as_str(),
                pushback_ms = saturating_millis(pushback),
                max_pushback_ms = saturating_millis(max_pushback),
                "not retrying"
            );
            return self.stop(GiveUp::Pushback);
        }
        let backoff = &self.shared.config.backoff;
        let delay = self
            .session
            .get_or_insert_with(|| Box::new(backoff.session()))
            .next_delay()
            .max(pushback);
        if let Some(deadline) = self.deadline()
            && delay.saturating_add(self.shared.config.min_attempt_time)
                > deadline.saturating_duration_since(Instant::now())
        {
            return give_up(self, GiveUp::Deadline);
        }
        if !self.shared.budget.withdraw() {
            return give_up(self, GiveUp::Budget);
        }
        self.retries += 1;
        let next = attempt + 1;
        self.stamp(req, next);
        self.shared.metrics().retry(result.is_ok());
        self.shared.retries.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.shared.retry_log.check() {
            tracing::info!(
                service = self.shared.service.as_deref(),
                attempt = next,
                reason = %Reason { outcome: &outcome, result },
                delay_ms = saturating_millis(delay),
                suppressed,
                "retrying request"
            );
        }
        Decision::Retry(delay)
    }

    /// The error to return when giving up: the typed error (with the last
    /// error as its source) for budget and deadline, else the result itself.
    pub(crate) fn finish<Res>(
        why: Option<GiveUp>,
        result: Result<Res, BoxError>,
    ) -> Result<Res, BoxError> {
        match (why, result) {
            (Some(GiveUp::Budget), Err(e)) => Err(Box::new(BudgetExhausted::new(Some(e)))),
            (Some(GiveUp::Deadline), Err(e)) => Err(Box::new(DeadlineExceeded::new(Some(e)))),
            (_, result) => result,
        }
    }

    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// Attempts sent so far, the first included.
    pub(crate) fn attempts(&self) -> u32 {
        self.retries + self.requeues + 1
    }

    /// After the last allowed attempt (no copy was kept for another): reports
    /// the give-up if that attempt failed retryably.
    pub(crate) fn note_last_attempt<Res, E>(&mut self, result: &Result<Response<Res>, E>)
    where
        C: Classify<Response<Res>, E>,
        E: 'static,
    {
        if self.requeues > 0
            && let Err(e) = result
            && as_dyn_error(e).is_some_and(self.shared.unsent)
        {
            tracing::debug!(
                attempt = self.attempts(),
                reason = GiveUp::MaxRequeues.as_str(),
                "not requeueing a request that never reached a server"
            );
            self.note_give_up(GiveUp::MaxRequeues);
            return;
        }
        if self.retries > 0 && self.shared.classifier.classify(result).is_retryable() {
            tracing::debug!(
                attempt = self.attempts(),
                reason = GiveUp::MaxRetries.as_str(),
                "not retrying"
            );
            self.note_give_up(GiveUp::MaxRetries);
        }
    }
}

/// Renders why an attempt is retried: the status, or the error.
struct Reason<'a, Res, E> {
    outcome: &'a Outcome,
    result: &'a Result<Response<Res>, E>,
}

impl<Res, E: 'static> fmt::Display for Reason<'_, Res, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.result {
            Ok(r) => write!(f, "status {}", r.status().as_u16())?,
            Err(e) => match as_dyn_error(e) {
                Some(e) => {
                    write!(f, "error: {e}")?;
                    let mut s = e.source();
                    while let Some(inner) = s {
                        write!(f, ": {inner}")?;
                        s = inner.source();
                    }
                }
                None => f.write_str("error")?,
            },
        }
        if let Some(Pushback::After(p)) = self.outcome.pushback() {
            write!(f, " (pushback {}ms)", p.as_millis())?;
        }
        Ok(())
    }
}

/// `at + d`, saturating far in the future instead of panicking on overflow
/// (validated configs never get there; this keeps any other value from
/// panicking a call).
pub(crate) fn instant_after(at: Instant, d: Duration) -> Instant {
    // tokio's own "far future": about 30 years.
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    at.checked_add(d.min(FAR)).unwrap_or(at)
}

fn saturating_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

// ===== impl Policy =====

impl<B, Res, E, C> tower::retry::Policy<Request<B>, Response<Res>, E> for RetryPolicy<C>
where
    B: TryCloneBody,
    C: Classify<Response<Res>, E>,
    E: 'static,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<Res>, E>,
    ) -> Option<Self::Future> {
        match self.decide(req, result) {
            Decision::Retry(delay) => Some(tokio::time::sleep(delay)),
            Decision::Stop(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        // tower calls this on the service's own policy once per request
        // (retries == 0 there: only the per-request clones ever retry).
        if self.retries == 0 && self.requeues == 0 {
            self.begin();
        }
        self.pending_record = false;
        self.first_pick = None;
        let copy = self.copy(req)?;
        // The first attempt (the caller's request) is out of reach here: the
        // retries share one record, put in the copy at the first retry.
        self.pending_record = self.needs_record(&copy);
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BudgetConfig;
    use bytes::Bytes;
    use http_body_util::Full;
    use mesh_core::backoff::{Backoff, Jitter};
    use mesh_core::classify::{GrpcClassifier, HttpClassifier};

    fn config() -> RetryConfig {
        RetryConfig {
            backoff: Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(1))
                .with_jitter(Jitter::None),
            ..RetryConfig::default()
        }
    }

    fn req(method: Method) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri("http://svc/x")
            .body(Full::new(Bytes::from_static(b"b")))
            .unwrap()
    }

    fn status(code: u16) -> Result<Response<()>, BoxError> {
        Ok(Response::builder().status(code).body(()).unwrap())
    }

    #[test]
    fn idempotency_rules() {
        let p = RetryPolicy::new(config()).unwrap();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(p.is_retryable_request(&req(m.clone())), "{m}");
        }
        assert!(!p.is_retryable_request(&req(Method::POST)));
        assert!(!p.is_retryable_request(&req(Method::PATCH)));
        let mut keyed = req(Method::POST);
        keyed
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_static("k1"));
        assert!(p.is_retryable_request(&keyed));
        let opted = RetryPolicy::new(RetryConfig {
            retry_non_idempotent: true,
            ..config()
        })
        .unwrap();
        assert!(opted.is_retryable_request(&req(Method::PATCH)));
    }

    #[test]
    fn grpc_methods_marked_idempotent() {
        let p = RetryPolicy::with_classifier(
            RetryConfig {
                idempotent_grpc_methods: vec!["/users.Users/Get".into(), "/health.Health/*".into()],
                ..config()
            },
            GrpcClassifier::default(),
        )
        .unwrap();
        let grpc = |path: &str| {
            Request::post(format!("http://svc{path}"))
                .header("content-type", "application/grpc+proto")
                .body(())
                .unwrap()
        };
        assert!(p.is_retryable_request(&grpc("/users.Users/Get")));
        assert!(p.is_retryable_request(&grpc("/health.Health/Check")));
        assert!(!p.is_retryable_request(&grpc("/users.Users/Delete")));
        // Not gRPC: a plain POST to the same path is not retried.
        let plain = Request::post("http://svc/users.Users/Get")
            .body(())
            .unwrap();
        assert!(!p.is_retryable_request(&plain));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_then_max_retries_then_attempt_header() {
        let mut p = RetryPolicy::new(config()).unwrap();
        p.begin();
        let mut r = req(Method::GET);
        let mut delays = Vec::new();
        loop {
            match p.decide(&mut r, &status(503)) {
                Decision::Retry(d) => delays.push(d),
                Decision::Stop(why) => {
                    assert_eq!(why, Some(GiveUp::MaxRetries));
                    break;
                }
            }
        }
        assert_eq!(delays, [100, 200, 400].map(Duration::from_millis).to_vec());
        assert_eq!(r.headers()["x-mesh-attempt"], "4");
        assert_eq!(p.decide(&mut r, &status(200)), Decision::Stop(None));
        assert_eq!(p.decide(&mut r, &status(404)), Decision::Stop(None));
    }

    #[test]
    fn a_larger_pushback_replaces_the_delay_and_one_beyond_the_cap_gives_up() {
        let mut p = RetryPolicy::new(RetryConfig {
            max_pushback: Duration::from_secs(5),
            ..config()
        })
        .unwrap();
        let mut r = req(Method::GET);
        let res = |after: &str| -> Result<Response<()>, BoxError> {
            Ok(Response::builder()
                .status(503)
                .header("retry-after", after)
                .body(())
                .unwrap())
        };
        assert_eq!(
            p.decide(&mut r, &res("2")),
            Decision::Retry(Duration::from_secs(2))
        );
        // At the cap: still waited for.
        assert_eq!(
            p.decide(&mut r, &res("5")),
            Decision::Retry(Duration::from_secs(5))
        );
        // A pushback shorter than the backoff does not shorten it.
        assert_eq!(
            p.decide(&mut r, &res("0")),
            Decision::Retry(Duration::from_millis(400))
        );
        // Beyond the cap: "not now", the response goes back at once (and the
        // budget is not charged).
        let mut p = RetryPolicy::new(RetryConfig {
            max_pushback: Duration::from_secs(5),
            ..config()
        })
        .unwrap();
        let before = p.budget().remaining();
        assert_eq!(
            p.decide(&mut r, &res("6")),
            Decision::Stop(Some(GiveUp::Pushback))
        );
        assert_eq!(p.gave_up(), Some(GiveUp::Pushback));
        assert_eq!(p.budget().remaining(), before);
        // The response, not an error, is what the caller gets.
        let kept = RetryPolicy::<HttpClassifier>::finish(Some(GiveUp::Pushback), Ok(503u16));
        assert_eq!(kept.unwrap(), 503);
    }

    #[test]
    fn deadline_arithmetic_never_overflows() {
        let start = Instant::now();
        assert!(instant_after(start, Duration::MAX) > start);
        assert_eq!(
            instant_after(start, Duration::from_secs(1)),
            start + Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_past_the_deadline_or_do_not_retry_stops() {
        let mut p = RetryPolicy::with_classifier(
            RetryConfig {
                deadline: Some(Duration::from_secs(3)),
                ..config()
            },
            GrpcClassifier::default(),
        )
        .unwrap();
        p.begin();
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut r = req(Method::GET);
        let grpc = |pushback: &str| -> Result<Response<()>, BoxError> {
            Ok(Response::builder()
                .header("grpc-status", "14")
                .header("grpc-retry-pushback-ms", pushback)
                .body(())
                .unwrap())
        };
        assert_eq!(p.decide(&mut r, &grpc("-1")), Decision::Stop(None));
        assert_eq!(
            p.decide(&mut r, &grpc("3000")),
            Decision::Stop(Some(GiveUp::Deadline))
        );
        assert_eq!(
            p.decide(&mut r, &grpc("300")),
            Decision::Retry(Duration::from_millis(300))
        );
    }

    #[test]
    fn budget_stops_retries_and_is_shared_by_clones() {
        let budget = RetryBudget::new(&BudgetConfig {
            ttl: Duration::from_secs(10),
            min_retries_per_second: 0,
            retry_ratio: 0.5,
        });
        let template = RetryPolicy::new(config())
            .unwrap()
            .with_budget(budget.clone());
        let mut a = template.clone();
        let mut b = template.clone();
        a.begin();
        b.begin();
        let mut r = req(Method::GET);
        assert!(matches!(a.decide(&mut r, &status(502)), Decision::Retry(_)));
        assert_eq!(
            b.decide(&mut r, &status(502)),
            Decision::Stop(Some(GiveUp::Budget))
        );
        assert_eq!(b.gave_up(), Some(GiveUp::Budget));
        assert_eq!(budget.remaining(), 0);
    }

    #[test]
    fn give_up_wraps_errors_but_keeps_responses() {
        let e: Result<(), BoxError> = Err("refused".into());
        let err = RetryPolicy::<HttpClassifier>::finish(Some(GiveUp::Budget), e).unwrap_err();
        assert!(err.is::<BudgetExhausted>());
        let e: Result<(), BoxError> = Err("refused".into());
        let err = RetryPolicy::<HttpClassifier>::finish(Some(GiveUp::Deadline), e).unwrap_err();
        assert!(err.is::<DeadlineExceeded>());
        let e: Result<(), BoxError> = Err("refused".into());
        let err = RetryPolicy::<HttpClassifier>::finish(Some(GiveUp::MaxRetries), e).unwrap_err();
        assert_eq!(err.to_string(), "refused");
        assert!(RetryPolicy::<HttpClassifier>::finish(Some(GiveUp::Budget), Ok(())).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn inside_tower_retry_only_retries_carry_a_shared_record() {
        use std::sync::Mutex;
        use tower::{Service, ServiceExt};

        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let tried = req.extensions().get::<TriedEndpoints>().cloned();
            let mut log = log.lock().unwrap();
            let attempt = log.len() as u64 + 1;
            if let Some(t) = &tried {
                t.record_id(attempt);
            }
            log.push(tried);
            let code = if attempt < 3 { 503 } else { 200 };
            async move { status(code) }
        });
        let mut svc = tower::retry::Retry::new(RetryPolicy::new(config()).unwrap(), inner);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(req(Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        {
            let seen = seen.lock().unwrap();
            assert!(seen[0].is_none());
            let (second, third) = (seen[1].as_ref().unwrap(), seen[2].as_ref().unwrap());
            assert!(third.contains_id(2) && third.contains_id(3));
            assert_eq!(second.len(), third.len());
        }
        // A request that succeeds at once leaves no record on the next one.
        let mut ok = tower::retry::Retry::new(
            RetryPolicy::new(config()).unwrap(),
            tower::service_fn(|req: Request<Full<Bytes>>| {
                assert!(req.extensions().get::<TriedEndpoints>().is_none());
                async { status(200) }
            }),
        );
        for _ in 0..2 {
            ok.ready()
                .await
                .unwrap()
                .call(req(Method::GET))
                .await
                .unwrap();
        }
    }

    #[test]
    fn fresh_randomness_per_request() {
        let template = RetryPolicy::new(RetryConfig {
            backoff: Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(10)),
            ..RetryConfig::default()
        })
        .unwrap();
        let draw = |mut p: RetryPolicy| {
            let mut r = req(Method::GET);
            (0..3)
                .map(|_| match p.decide(&mut r, &status(503)) {
                    Decision::Retry(d) => d,
                    Decision::Stop(_) => Duration::ZERO,
                })
                .collect::<Vec<_>>()
        };
        assert_ne!(draw(template.clone()), draw(template.clone()));
    }
}

//! Intentions as authorization: each caller's SPIFFE identity against the
//! intentions Consul returns for this service as destination.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Method, StatusCode};
use mesh_auth::CallerIdentity;
use mesh_auth::authz::Decision;
use mesh_auth::future::ResponseFuture;
use tower_layer::Layer;
use tower_service::Service;

use super::identity::{ConnectIdentity, Shared};
use super::model::{Intention, IntentionHttp, IntentionPermission};
use super::spiffe::ServiceIdRef;

/// A decision on one request, and what made it: what
/// [`IntentionsLayer`] enforces and its audit events report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntentionVerdict {
    /// Allow or deny.
    pub decision: Decision,
    /// Why, in a word fit for a log field: `intention`, `permission`
    /// (an L7 permission of an intention), `default` (no intention
    /// matched), `unauthenticated`, `not_a_service`, `foreign_trust_domain`
    /// or `non_canonical_path`.
    pub reason: &'static str,
    /// The intention that decided, if one did (its `id`, `source_name`
    /// and `precedence` go into the audit event).
    pub intention: Option<Arc<Intention>>,
    /// The index of the L7 permission that decided, if one did.
    pub permission: Option<usize>,
}

impl IntentionVerdict {
    fn plain(decision: Decision, reason: &'static str) -> Self {
        Self {
            decision,
            reason,
            intention: None,
            permission: None,
        }
    }
}

/// The decision for a caller calling `method` on `path` with `headers`,
/// given the intentions for this destination (highest precedence first),
/// the trust domain, and the decision when none matches.
///
/// The first intention whose source matches the caller's service (or
/// `*`) decides: its `Action`, or for an L7 intention the first of its
/// permissions that matches the request; when none of them matches, the
/// default decides, as Consul documents. Only service identities of this
/// trust domain can match.
///
/// `PathRegex` and header `Regex` conditions are not evaluated (mesh has
/// no RE2): such a permission is taken to match when its action is `deny`
/// and not to match when it is `allow`, so an unknown condition never lets
/// a request through. A warning says so.
pub fn decide(
    intentions: &[Arc<Intention>],
    trust_domain: &str,
    default: Decision,
    caller: Option<&CallerIdentity>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> IntentionVerdict {
    if !canonical(path) {
        return IntentionVerdict::plain(Decision::Deny, "non_canonical_path");
    }
    let Some(caller) = caller else {
        return IntentionVerdict::plain(Decision::Deny, "unauthenticated");
    };
    let Some(id) = ServiceIdRef::parse(caller.as_str()) else {
        return IntentionVerdict::plain(Decision::Deny, "not_a_service");
    };
    if id.trust_domain != trust_domain {
        return IntentionVerdict::plain(Decision::Deny, "foreign_trust_domain");
    }
    for intention in intentions {
        let source_ok = intention.source_name == "*" || intention.source_name == id.service;
        let ns_ok =
            matches!(intention.source_ns.as_str(), "" | "*") || intention.source_ns == id.namespace;
        if !(source_ok && ns_ok) {
            continue;
        }
        let found = |decision, reason, permission| IntentionVerdict {
            decision,
            reason,
            intention: Some(intention.clone()),
            permission,
        };
        if intention.permissions.is_empty() {
            let decision = if intention.action == "allow" {
                Decision::Allow
            } else {
                Decision::Deny
            };
            return found(decision, "intention", None);
        }
        for (i, p) in intention.permissions.iter().enumerate() {
            if permission_matches(p, method, path, headers) {
                let decision = if p.action == "allow" {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                return found(decision, "permission", Some(i));
            }
        }
        // An L7 intention whose permissions do not match: the default.
        return found(default, "default", None);
    }
    IntentionVerdict::plain(default, "default")
}

fn permission_matches(
    p: &IntentionPermission,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> bool {
    let deny = p.action != "allow";
    let Some(http) = &p.http else {
        return true;
    };
    let unknown = !http.path_regex.is_empty() || http.header.iter().any(|h| !h.regex.is_empty());
    if unknown {
        tracing::warn!(
            action = %p.action,
            "an L7 intention permission uses a regex, which mesh does not evaluate: \
             treated as matching for deny, not matching for allow"
        );
        return deny;
    }
    http_matches(http, method, path, headers)
}

fn http_matches(http: &IntentionHttp, method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if !http.path_exact.is_empty() && http.path_exact != path {
        return false;
    }
    if !http.path_prefix.is_empty() && !path.starts_with(&http.path_prefix) {
        return false;
    }
    if !http.methods.is_empty()
        && !http
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method.as_str()))
    {
        return false;
    }
    http.header.iter().all(|h| {
        let value = headers.get(&h.name).and_then(|v| v.to_str().ok());
        let holds = match value {
            None => false,
            Some(v) => {
                (h.exact.is_empty() || v == h.exact)
                    && (h.prefix.is_empty() || v.starts_with(&h.prefix))
                    && (h.suffix.is_empty() || v.ends_with(&h.suffix))
                    && (h.present
                        || !h.exact.is_empty()
                        || !h.prefix.is_empty()
                        || !h.suffix.is_empty())
            }
        };
        holds != h.invert
    })
}

/// No dot segments (also percent-encoded, or followed by `;params`), no
/// encoded slash or backslash, no backslash, no NUL: what an L7 rule may be
/// matched against as it is. No allocation.
fn canonical(path: &str) -> bool {
    let b = path.as_bytes();
    if b.iter().any(|&c| c == b'\\' || c == 0) {
        return false;
    }
    let encoded = |i: usize, hi: u8, lo: u8| {
        b.len() > i + 2 && b[i] == b'%' && b[i + 1] == hi && (b[i + 2] | 0x20) == lo
    };
    if (0..b.len()).any(|i| encoded(i, b'2', b'f') || encoded(i, b'5', b'c')) {
        return false;
    }
    !path.split('/').any(|seg| {
        let seg = seg.split(';').next().unwrap_or(seg).as_bytes();
        let (mut i, mut dots) = (0, 0);
        while i < seg.len() {
            if seg[i] == b'.' {
                i += 1;
            } else if seg.len() > i + 2
                && seg[i] == b'%'
                && seg[i + 1] == b'2'
                && (seg[i + 2] | 0x20) == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

// ===== the layer =====

/// Authorizes each request's caller (the [`CallerIdentity`] mTLS put into
/// its extensions) against the Consul intentions for this service, as the
/// [`ConnectIdentity`] keeps them current. A denied request gets `403`
/// (gRPC: `grpc-status` 7, `PERMISSION_DENIED`).
///
/// Every decision is an audit event on the `mesh_auth::audit` target, with
/// the fields of mesh-auth's authorization layer (`decision`, `reason`,
/// `identity`, `kind`, `trust_domain`, `cert_sha256`, `method`, `path`) and
/// the intention that decided (`intention`, `intention_source`,
/// `precedence`, `permission`). Denials are INFO, allows DEBUG.
#[derive(Clone)]
pub struct IntentionsLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IntentionsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntentionsLayer")
            .field("destination", &self.shared.config.service)
            .finish()
    }
}

impl IntentionsLayer {
    /// Enforces the intentions `identity` follows.
    pub fn new(identity: &ConnectIdentity) -> Self {
        Self {
            shared: identity.shared().clone(),
        }
    }
}

impl<S> Layer<S> for IntentionsLayer {
    type Service = AuthorizeIntentions<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeIntentions {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`IntentionsLayer`].
#[derive(Clone)]
pub struct AuthorizeIntentions<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuthorizeIntentions<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeIntentions")
            .field("inner", &self.inner)
            .field("destination", &self.shared.config.service)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthorizeIntentions<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let identity = req.extensions().get::<CallerIdentity>();
        let path = req.uri().path();
        let intentions = self.shared.intentions.load();
        let local = self.shared.local.load();
        let verdict = decide(
            &intentions,
            &local.trust_domain,
            self.shared.config.default,
            identity,
            req.method(),
            path,
            req.headers(),
        );
        audit(&verdict, identity, req.method(), path);
        // The series mesh-auth's policy layer counts, so one dashboard
        // shows both.
        #[cfg(feature = "metrics")]
        metrics::counter!("mesh_auth_authorization_total", "decision" => verdict.decision.as_str())
            .increment(1);
        match verdict.decision {
            Decision::Allow => ResponseFuture::inner(self.inner.call(req)),
            Decision::Deny => {
                ResponseFuture::reject(req.headers(), StatusCode::FORBIDDEN, "7", &[])
            }
        }
    }
}

fn audit(
    verdict: &IntentionVerdict,
    identity: Option<&CallerIdentity>,
    method: &Method,
    path: &str,
) {
    macro_rules! event {
        ($level:expr, $msg:literal) => {
            tracing::event!(
                target: "mesh_auth::audit",
                $level,
                decision = verdict.decision.as_str(),
                reason = verdict.reason,
                intention = verdict.intention.as_ref().map(|i| i.id.as_str()),
                intention_source = verdict.intention.as_ref().map(|i| i.source_name.as_str()),
                precedence = verdict.intention.as_ref().map(|i| i.precedence),
                permission = verdict.permission,
                identity = identity.map_or("anonymous", CallerIdentity::as_str),
                kind = identity.map(|i| i.kind().as_str()),
                trust_domain = identity.and_then(CallerIdentity::trust_domain),
                cert_sha256 = identity.and_then(CallerIdentity::certificate_fingerprint),
                method = %method,
                path,
                $msg
            )
        };
    }
    match verdict.decision {
        Decision::Allow => event!(
            tracing::Level::DEBUG,
            "request allowed by Consul intentions"
        ),
        Decision::Deny => event!(tracing::Level::INFO, "request denied by Consul intentions"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intentions(json: &str) -> Vec<Arc<Intention>> {
        serde_json::from_str::<Vec<Intention>>(json)
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect()
    }

    fn caller(svc: &str) -> CallerIdentity {
        CallerIdentity::spiffe(format!("spiffe://td.consul/ns/default/dc/dc1/svc/{svc}"))
    }

    fn check(list: &[Arc<Intention>], who: &str, method: &Method, path: &str) -> IntentionVerdict {
        decide(
            list,
            "td.consul",
            Decision::Deny,
            Some(&caller(who)),
            method,
            path,
            &HeaderMap::new(),
        )
    }

    #[test]
    fn first_matching_intention_by_precedence_decides() {
        let list = intentions(
            r#"[{"ID":"1","SourceName":"web","Action":"deny","Precedence":9},
                {"ID":"2","SourceName":"*","Action":"allow","Precedence":8}]"#,
        );
        let v = check(&list, "web", &Method::GET, "/");
        assert_eq!(
            (v.decision, v.intention.as_ref().map(|i| i.id.as_str())),
            (Decision::Deny, Some("1"))
        );
        let v = check(&list, "api", &Method::GET, "/");
        assert_eq!(
            (v.decision, v.intention.as_ref().map(|i| i.id.as_str())),
            (Decision::Allow, Some("2"))
        );
        assert_eq!(check(&[], "api", &Method::GET, "/").reason, "default");
    }

    #[test]
    fn l7_permissions_match_path_method_and_headers() {
        let list = intentions(
            r#"[{"ID":"1","SourceName":"web","Action":"","Precedence":9,"Permissions":[
                {"Action":"deny","HTTP":{"PathPrefix":"/admin"}},
                {"Action":"allow","HTTP":{"PathPrefix":"/v1/","Methods":["GET"],
                  "Header":[{"Name":"x-env","Exact":"prod"},{"Name":"x-debug","Present":true,"Invert":true}]}},
                {"Action":"deny","HTTP":{"PathRegex":"/v2/.*"}}]}]"#,
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-env", "prod".parse().unwrap());
        let run = |m: Method, p: &str, h: &HeaderMap| {
            decide(
                &list,
                "td.consul",
                Decision::Allow,
                Some(&caller("web")),
                &m,
                p,
                h,
            )
        };
        let v = run(Method::GET, "/v1/users", &headers);
        assert_eq!((v.decision, v.permission), (Decision::Allow, Some(1)));
        // POST matches no plain permission; the regex `deny` is taken to
        // match whatever reaches it (fail closed).
        let v = run(Method::POST, "/v1/users", &headers);
        assert_eq!((v.decision, v.permission), (Decision::Deny, Some(2)));
        let v = run(Method::GET, "/admin/x", &headers);
        assert_eq!((v.decision, v.permission), (Decision::Deny, Some(0)));
        headers.insert("x-debug", "1".parse().unwrap());
        let v = run(Method::GET, "/v1/users", &headers);
        assert_eq!((v.decision, v.permission), (Decision::Deny, Some(2)));
        assert_eq!(
            run(Method::GET, "/v1/%2e%2e/admin", &headers).reason,
            "non_canonical_path"
        );

        // Without the regex: a request no permission matches gets the default.
        let mut plain = (*list[0]).clone();
        plain.permissions.pop();
        let plain = [Arc::new(plain)];
        let v = decide(
            &plain,
            "td.consul",
            Decision::Allow,
            Some(&caller("web")),
            &Method::POST,
            "/v1/users",
            &HeaderMap::new(),
        );
        assert_eq!((v.decision, v.reason), (Decision::Allow, "default"));
        assert_eq!(v.intention.map(|i| i.id.clone()).as_deref(), Some("1"));
    }

    #[test]
    fn only_canonical_paths_reach_the_rules() {
        for ok in ["/", "/v1/users", "/a/.hidden", "/a/...", "/a;b=1/c", "/%41"] {
            assert!(canonical(ok), "{ok}");
        }
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/..;x/b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a\0b",
        ] {
            assert!(!canonical(bad), "{bad}");
        }
    }

    #[test]
    fn callers_of_another_trust_domain_or_shape_are_denied() {
        let list = intentions(r#"[{"ID":"1","SourceName":"*","Action":"allow","Precedence":5}]"#);
        let other = CallerIdentity::spiffe("spiffe://other.consul/ns/default/dc/dc1/svc/web");
        let v = decide(
            &list,
            "td.consul",
            Decision::Allow,
            Some(&other),
            &Method::GET,
            "/",
            &HeaderMap::new(),
        );
        assert_eq!(
            (v.decision, v.reason),
            (Decision::Deny, "foreign_trust_domain")
        );
        let agent = CallerIdentity::spiffe("spiffe://td.consul/agent/client/dc/dc1/id/x");
        let v = decide(
            &list,
            "td.consul",
            Decision::Allow,
            Some(&agent),
            &Method::GET,
            "/",
            &HeaderMap::new(),
        );
        assert_eq!(v.reason, "not_a_service");
        let v = decide(
            &list,
            "td.consul",
            Decision::Allow,
            None,
            &Method::GET,
            "/",
            &HeaderMap::new(),
        );
        assert_eq!(v.reason, "unauthenticated");
    }
}

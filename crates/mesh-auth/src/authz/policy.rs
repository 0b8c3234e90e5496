//! The policy: which caller may call what.

use std::sync::Arc;

use http::Method;
use mesh_core::config::InvalidConfig;

use crate::identity::{CallerIdentity, IdentityKind, parse_spiffe_id};

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Decision {
    /// Let the request through.
    Allow,
    /// Answer `403 Forbidden`.
    #[default]
    Deny,
}

impl Decision {
    /// `"allow"` or `"deny"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// Who may call what: rules that allow, and a default (deny) for the rest.
///
/// With the `serde` feature, so `MeshConfig` can carry it:
///
/// ```json
/// { "default": "deny",
///   "rules": [
///     { "identity": "spiffe://example.org/orders", "methods": ["GET"], "paths": ["/users"] },
///     { "identity": "spiffe://example.org/admin/*" },
///     { "identity": "apikey:billing", "paths": ["/invoices/"] } ] }
/// ```
///
/// A `default` of `allow` with rules is almost always a mistake (the rules
/// then restrict nothing); [`compile`](Self::compile) logs a warning for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[non_exhaustive]
pub struct AuthorizationPolicy {
    /// The decision when no rule allows the request. Default deny.
    #[cfg_attr(feature = "serde", serde(default))]
    pub default: Decision,
    /// Rules, each allowing one identity pattern some methods and paths.
    #[cfg_attr(feature = "serde", serde(default))]
    pub rules: Vec<Rule>,
}

/// One allow rule.
///
/// `identity` names the kind of identity as well as the name, so a
/// certificate's DNS SAN `billing` never passes for the API key `billing`:
///
/// - `spiffe://example.org/orders`: that SPIFFE ID (from a certificate's URI
///   SAN); `spiffe://example.org/ns/prod/*`: every SPIFFE ID under that
///   path; `spiffe:*`: any SPIFFE ID;
/// - `dns:orders.internal`: a certificate whose identity is that DNS SAN;
///   `dns:*`: any such certificate;
/// - `apikey:billing`: the caller of the API key mapped to `billing`;
///   `apikey:*`: any valid API key;
/// - `*`: any authenticated caller.
///
/// Empty `methods` means any method; empty `paths` any path. A path prefix
/// matches whole segments: `/admin` matches `/admin` and `/admin/x`, never
/// `/administrator`. Request paths with dot segments (`/public/../admin`,
/// `%2e%2e`, `..;`), encoded slashes (`%2f`, `%5c`) or backslashes are denied
/// before any rule is looked at, as Envoy's RBAC does: a backend that
/// normalizes paths would otherwise serve `/admin` to a rule for `/public`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[non_exhaustive]
pub struct Rule {
    /// Whom the rule is for.
    pub identity: String,
    /// Allowed methods (`GET`, `POST`, ...); empty for all.
    #[cfg_attr(feature = "serde", serde(default))]
    pub methods: Vec<String>,
    /// Allowed path prefixes, each starting with `/`; empty for all.
    #[cfg_attr(feature = "serde", serde(default))]
    pub paths: Vec<String>,
}

impl Rule {
    /// A rule allowing `identity` everything.
    pub fn allow(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            methods: Vec::new(),
            paths: Vec::new(),
        }
    }

    /// Restricts the rule to these methods.
    #[must_use]
    pub fn methods<I: IntoIterator<Item = S>, S: Into<String>>(mut self, methods: I) -> Self {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts the rule to these path prefixes.
    #[must_use]
    pub fn paths<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.paths = paths.into_iter().map(Into::into).collect();
        self
    }
}

impl AuthorizationPolicy {
    /// A deny-by-default policy with these allow rules.
    pub fn deny_by_default(rules: Vec<Rule>) -> Self {
        Self {
            default: Decision::Deny,
            rules,
        }
    }

    /// Checks every rule; the error names each bad field (`rules[2].methods[0]`).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        for (i, rule) in self.rules.iter().enumerate() {
            if let Err(why) = IdentityPattern::parse(&rule.identity) {
                errors.push(format!("rules[{i}].identity"), why);
            }
            for (j, m) in rule.methods.iter().enumerate() {
                if Method::from_bytes(m.as_bytes()).is_err() {
                    errors.push(format!("rules[{i}].methods[{j}]"), "is not an HTTP method");
                }
            }
            for (j, p) in rule.paths.iter().enumerate() {
                if !p.starts_with('/') {
                    errors.push(format!("rules[{i}].paths[{j}]"), "must start with `/`");
                }
            }
        }
        errors.into_result()
    }

    /// Validates and compiles the policy for the request path.
    pub fn compile(&self) -> Result<CompiledPolicy, InvalidConfig> {
        self.validate()?;
        if self.default == Decision::Allow && !self.rules.is_empty() {
            tracing::warn!(
                rules = self.rules.len(),
                "authorization policy has `default: allow`: its rules restrict nothing, \
                 every authenticated or anonymous caller is allowed everything"
            );
        }
        let rules = self
            .rules
            .iter()
            .filter_map(|r| {
                Some(CompiledRule {
                    identity: IdentityPattern::parse(&r.identity).ok()?,
                    methods: r
                        .methods
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                        .collect(),
                    paths: r.paths.iter().map(|p| p.as_str().into()).collect(),
                })
            })
            .collect();
        Ok(CompiledPolicy {
            inner: Arc::new(Compiled {
                default: self.default,
                rules,
            }),
        })
    }
}

/// A validated policy, ready for the request path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    inner: Arc<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    default: Decision,
    rules: Box<[CompiledRule]>,
}

#[derive(Debug)]
struct CompiledRule {
    identity: IdentityPattern,
    methods: Box<[Method]>,
    paths: Box<[Box<str>]>,
}

#[derive(Debug)]
enum IdentityPattern {
    /// `*`: any authenticated caller.
    Any,
    /// `dns:*`, `apikey:*`, `spiffe:*`.
    Kind(IdentityKind),
    Exact(IdentityKind, Box<str>),
    /// `spiffe://td/path/*`, kept as `spiffe://td/path/`.
    Prefix(Box<str>),
}

impl IdentityPattern {
    fn parse(id: &str) -> Result<Self, &'static str> {
        const KINDS: &str = "must name its kind: `spiffe://...`, `dns:<name>`, \
                             `apikey:<name>` (or `*`, `spiffe:*`, `dns:*`, `apikey:*`)";
        if id == "*" {
            return Ok(Self::Any);
        }
        if id.starts_with("spiffe://") {
            return match id.strip_suffix('*') {
                Some(prefix) => {
                    if !prefix.ends_with('/') || prefix.contains('*') {
                        return Err("may hold `*` only as a trailing `/*`");
                    }
                    let domain = prefix.strip_suffix('/').unwrap_or(prefix);
                    parse_spiffe_id(domain).map_err(|_| "is not a SPIFFE ID followed by `/*`")?;
                    Ok(Self::Prefix(prefix.into()))
                }
                None => {
                    parse_spiffe_id(id).map_err(|_| "is not a valid SPIFFE ID")?;
                    Ok(Self::Exact(IdentityKind::Spiffe, id.into()))
                }
            };
        }
        let (kind, name) = match id.split_once(':') {
            Some(("spiffe", "*")) => return Ok(Self::Kind(IdentityKind::Spiffe)),
            Some(("dns", name)) => (IdentityKind::Dns, name),
            Some(("apikey", name)) => (IdentityKind::ApiKey, name),
            _ => return Err(KINDS),
        };
        match name {
            "*" => Ok(Self::Kind(kind)),
            "" => Err("must not be empty after its kind"),
            n if n.contains('*') => Err("may hold `*` only alone after its kind (`dns:*`)"),
            n if n.trim() != n => Err("must not have surrounding whitespace"),
            n => Ok(Self::Exact(kind, n.into())),
        }
    }

    fn matches(&self, identity: &CallerIdentity) -> bool {
        match self {
            Self::Any => true,
            Self::Kind(kind) => identity.kind() == *kind,
            Self::Exact(kind, name) => identity.kind() == *kind && **name == *identity.as_str(),
            Self::Prefix(prefix) => {
                identity.kind() == IdentityKind::Spiffe && identity.as_str().starts_with(&**prefix)
            }
        }
    }
}

/// A decision and why: what [`CompiledPolicy::explain`] returns, and what
/// audit events report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict {
    /// Allow or deny.
    pub decision: Decision,
    /// The index (in the policy's `rules`) of the rule that allowed the
    /// request; `None` when the default decided.
    pub rule: Option<usize>,
    /// Why, in a word fit for a log field: `rule`, `default`,
    /// `unauthenticated` or `non_canonical_path`.
    pub reason: &'static str,
}

impl CompiledPolicy {
    /// The decision for a caller (`None` when unauthenticated) calling
    /// `method` on `path`. Unauthenticated callers match no rule; a path
    /// that is not canonical is denied. No allocation.
    pub fn decide(
        &self,
        identity: Option<&CallerIdentity>,
        method: &Method,
        path: &str,
    ) -> Decision {
        self.explain(identity, method, path).decision
    }

    /// [`decide`](Self::decide), with the rule that decided and why.
    pub fn explain(
        &self,
        identity: Option<&CallerIdentity>,
        method: &Method,
        path: &str,
    ) -> Verdict {
        if let Err(reason) = canonical_path(path) {
            return Verdict {
                decision: Decision::Deny,
                rule: None,
                reason,
            };
        }
        let Some(identity) = identity else {
            return Verdict {
                decision: self.inner.default,
                rule: None,
                reason: "unauthenticated",
            };
        };
        let rule = self.inner.rules.iter().position(|rule| {
            rule.identity.matches(identity)
                && (rule.methods.is_empty() || rule.methods.contains(method))
                && (rule.paths.is_empty() || rule.paths.iter().any(|p| path_matches(p, path)))
        });
        match rule {
            Some(i) => Verdict {
                decision: Decision::Allow,
                rule: Some(i),
                reason: "rule",
            },
            None => Verdict {
                decision: self.inner.default,
                rule: None,
                reason: "default",
            },
        }
    }
}

/// Whether rules may be matched against `path` as it is: no dot segments
/// (also as `%2e`, or followed by `;params` as Tomcat reads `..;`), no
/// encoded slash or backslash, no backslash, no NUL. The `Err` is the audit
/// reason.
fn canonical_path(path: &str) -> Result<(), &'static str> {
    const BAD: Result<(), &str> = Err("non_canonical_path");
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') || bytes.contains(&0) {
        return BAD;
    }
    // Encoded `/`, `\` and NUL: a backend that decodes them sees other segments.
    for w in bytes.windows(3) {
        if w[0] == b'%'
            && (w[1..].eq_ignore_ascii_case(b"2f")
                || w[1..].eq_ignore_ascii_case(b"5c")
                || w[1..].eq_ignore_ascii_case(b"00"))
        {
            return BAD;
        }
    }
    for segment in path.split('/') {
        // `..;jsessionid=x` is `..` to a servlet container.
        let segment = segment.split(';').next().unwrap_or(segment);
        let mut dots = 0;
        let mut rest = segment.as_bytes();
        let mut only_dots = true;
        while !rest.is_empty() {
            if rest[0] == b'.' {
                dots += 1;
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && rest[2] | 0x20 == b'e'
            {
                dots += 1;
                rest = &rest[3..];
            } else {
                only_dots = false;
                break;
            }
        }
        if only_dots && (dots == 1 || dots == 2) {
            return BAD;
        }
    }
    Ok(())
}

/// Segment-aware prefix: `/admin` matches `/admin` and `/admin/x`, not `/administrator`.
fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CompiledPolicy {
        AuthorizationPolicy::deny_by_default(vec![
            Rule::allow("spiffe://td/orders")
                .methods(["get"])
                .paths(["/users"]),
            Rule::allow("spiffe://td/admin/*"),
            Rule::allow("apikey:billing").paths(["/invoices/"]),
        ])
        .compile()
        .unwrap()
    }

    #[test]
    fn allows_only_what_a_rule_says() {
        let p = policy();
        let orders = CallerIdentity::spiffe("spiffe://td/orders");
        let admin = CallerIdentity::spiffe("spiffe://td/admin/alice");
        let billing = CallerIdentity::api_key("billing");
        let get = Method::GET;
        assert_eq!(p.decide(Some(&orders), &get, "/users/7"), Decision::Allow);
        assert_eq!(p.decide(Some(&orders), &get, "/users"), Decision::Allow);
        assert_eq!(p.decide(Some(&orders), &get, "/usersx"), Decision::Deny);
        assert_eq!(
            p.decide(Some(&orders), &Method::POST, "/users"),
            Decision::Deny
        );
        assert_eq!(
            p.decide(Some(&admin), &Method::DELETE, "/x"),
            Decision::Allow
        );
        assert_eq!(
            p.decide(Some(&billing), &get, "/invoices/1"),
            Decision::Allow
        );
        assert_eq!(p.decide(Some(&billing), &get, "/users"), Decision::Deny);
        assert_eq!(p.decide(None, &get, "/users"), Decision::Deny);
    }

    #[test]
    fn validate_names_each_bad_field() {
        let bad = AuthorizationPolicy::deny_by_default(vec![
            Rule::allow("apikey:a*b"),
            Rule::allow("apikey:x")
                .methods(["GET", "BAD METHOD"])
                .paths(["nope"]),
            Rule::allow(""),
        ]);
        let err = bad.validate().unwrap_err();
        let paths: Vec<_> = err.errors().iter().map(|e| e.path().to_owned()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].identity",
                "rules[1].methods[1]",
                "rules[1].paths[0]",
                "rules[2].identity"
            ]
        );
    }

    #[test]
    fn rules_match_the_identity_kind_too() {
        // Row 4 of issue 19: a certificate with DNS SAN `billing` passed a
        // rule written for the API key `billing`.
        let p = policy();
        let get = Method::GET;
        let cert = CallerIdentity::dns("billing");
        assert_eq!(p.decide(Some(&cert), &get, "/invoices/1"), Decision::Deny);
        let spiffe_lookalike = CallerIdentity::api_key("spiffe://td/admin/alice");
        assert_eq!(
            p.decide(Some(&spiffe_lookalike), &get, "/x"),
            Decision::Deny
        );
        let p = AuthorizationPolicy::deny_by_default(vec![
            Rule::allow("dns:*").paths(["/dns"]),
            Rule::allow("apikey:*").paths(["/keys"]),
            Rule::allow("spiffe:*").paths(["/svids"]),
        ])
        .compile()
        .unwrap();
        assert_eq!(p.decide(Some(&cert), &get, "/dns"), Decision::Allow);
        assert_eq!(p.decide(Some(&cert), &get, "/keys"), Decision::Deny);
        let key = CallerIdentity::api_key("billing");
        assert_eq!(p.decide(Some(&key), &get, "/keys"), Decision::Allow);
        assert_eq!(p.decide(Some(&key), &get, "/svids"), Decision::Deny);
        let err = AuthorizationPolicy::deny_by_default(vec![
            Rule::allow("billing"),
            Rule::allow("spiffe://TD/x"),
            Rule::allow("spiffe://td/x*"),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(err.errors().len(), 3);
    }

    #[test]
    fn dot_segments_and_encoded_slashes_never_reach_a_rule() {
        // Row 3 of issue 19: each was allowed by a rule for `/public`.
        let p = AuthorizationPolicy::deny_by_default(vec![
            Rule::allow("*").paths(["/public", "/pkg.Users/"]),
        ])
        .compile()
        .unwrap();
        let id = CallerIdentity::api_key("anyone");
        for path in [
            "/public/../admin",
            "/public/./../admin",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public%2f..%2fadmin",
            "/public/..%5cadmin",
            "/public\\..\\admin",
            "/pkg.Users/../pkg.Admin/X",
            "/public/.",
        ] {
            let v = p.explain(Some(&id), &Method::GET, path);
            assert_eq!(v.decision, Decision::Deny, "{path}");
            assert_eq!(v.reason, "non_canonical_path", "{path}");
        }
        for path in [
            "/public/a..b",
            "/public/.well-known",
            "/public/...",
            "/pkg.Users/Get",
        ] {
            assert_eq!(
                p.decide(Some(&id), &Method::GET, path),
                Decision::Allow,
                "{path}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn path_prefix_never_crosses_a_segment(prefix in "/[a-z]{1,5}", tail in "[a-z]{1,5}") {
            let path = format!("{prefix}{tail}");
            proptest::prop_assert!(!path_matches(&prefix, &path));
            let path = format!("{prefix}/{tail}");
            proptest::prop_assert!(path_matches(&prefix, &path));
        }
    }
}

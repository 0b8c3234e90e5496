//! The policy: which caller may call what.

use std::sync::Arc;

use http::Method;
use mesh_core::config::InvalidConfig;

use crate::identity::CallerIdentity;

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
///     { "identity": "billing", "paths": ["/invoices/"] } ] }
/// ```
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
/// `identity` is an exact identity, `"*"` for any authenticated caller, or a
/// prefix ending in `/*` (`spiffe://example.org/ns/prod/*`). Empty `methods`
/// means any method; empty `paths` any path. A path prefix matches whole
/// segments: `/admin` matches `/admin` and `/admin/x`, never `/administrator`.
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
            let id = rule.identity.as_str();
            let star = id.find('*');
            if id.trim().is_empty() {
                errors.push(format!("rules[{i}].identity"), "must not be empty");
            } else if star.is_some()
                && id != "*"
                && (!id.ends_with("/*") || star != Some(id.len() - 1))
            {
                errors.push(
                    format!("rules[{i}].identity"),
                    "may hold `*` only alone or as a trailing `/*`",
                );
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
        let rules = self
            .rules
            .iter()
            .map(|r| CompiledRule {
                identity: match r.identity.as_str() {
                    "*" => IdentityPattern::Any,
                    id => match id.strip_suffix('*') {
                        Some(prefix) => IdentityPattern::Prefix(prefix.into()),
                        None => IdentityPattern::Exact(id.into()),
                    },
                },
                methods: r
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .collect(),
                paths: r.paths.iter().map(|p| p.as_str().into()).collect(),
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
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl CompiledPolicy {
    /// The decision for a caller (`None` when unauthenticated) calling
    /// `method` on `path`. Unauthenticated callers match no rule. No
    /// allocation.
    pub fn decide(
        &self,
        identity: Option<&CallerIdentity>,
        method: &Method,
        path: &str,
    ) -> Decision {
        let Some(identity) = identity else {
            return self.inner.default;
        };
        let id = identity.as_str();
        let allowed = self.inner.rules.iter().any(|rule| {
            let who = match &rule.identity {
                IdentityPattern::Any => true,
                IdentityPattern::Exact(e) => &**e == id,
                IdentityPattern::Prefix(p) => id.starts_with(&**p),
            };
            who && (rule.methods.is_empty() || rule.methods.contains(method))
                && (rule.paths.is_empty() || rule.paths.iter().any(|p| path_matches(p, path)))
        });
        if allowed {
            Decision::Allow
        } else {
            self.inner.default
        }
    }
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
            Rule::allow("billing").paths(["/invoices/"]),
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
            Rule::allow("a*b"),
            Rule::allow("x")
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

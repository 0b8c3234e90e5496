//! Consul's SPIFFE IDs for services.

use std::fmt;

/// A Consul Connect service identity:
/// `spiffe://<trust-domain>[/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>`.
///
/// ```
/// use mesh_discovery::connect::ServiceId;
///
/// let id = ServiceId::parse("spiffe://1111.consul/ns/default/dc/dc1/svc/web").unwrap();
/// assert_eq!((id.trust_domain.as_str(), id.service.as_str()), ("1111.consul", "web"));
/// assert_eq!(id.to_string(), "spiffe://1111.consul/ns/default/dc/dc1/svc/web");
/// assert!(ServiceId::parse("spiffe://1111.consul/agent/client/dc/dc1/id/x").is_none());
/// let ap = ServiceId::parse("spiffe://1111.consul/ap/eu/ns/shop/dc/dc2/svc/db").unwrap();
/// assert_eq!((ap.partition.as_deref(), ap.namespace.as_str()), (Some("eu"), "shop"));
/// assert!(ServiceId::parse("spiffe://1111.consul/ns/default/dc/dc1/svc/web/extra").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServiceId {
    /// `<cluster-id>.consul` for Consul's built-in CA.
    pub trust_domain: String,
    /// The admin partition (Enterprise); `None` for the default one.
    pub partition: Option<String>,
    /// The namespace (`default` without Enterprise).
    pub namespace: String,
    /// The datacenter the instance runs in.
    pub datacenter: String,
    /// The service name.
    pub service: String,
}

impl ServiceId {
    /// A service identity in the default partition.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        datacenter: impl Into<String>,
        service: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            partition: None,
            namespace: namespace.into(),
            datacenter: datacenter.into(),
            service: service.into(),
        }
    }

    /// Parses a service SPIFFE ID; `None` for anything else (agent or
    /// server identities, other shapes, a malformed SPIFFE ID).
    pub fn parse(uri: &str) -> Option<Self> {
        let id = ServiceIdRef::parse(uri)?;
        Some(Self {
            trust_domain: id.trust_domain.to_owned(),
            partition: id.partition.map(str::to_owned),
            namespace: id.namespace.to_owned(),
            datacenter: id.datacenter.to_owned(),
            service: id.service.to_owned(),
        })
    }
}

/// [`ServiceId`], borrowed: what the authorization of each request parses,
/// without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServiceIdRef<'a> {
    pub(crate) trust_domain: &'a str,
    pub(crate) partition: Option<&'a str>,
    pub(crate) namespace: &'a str,
    pub(crate) datacenter: &'a str,
    pub(crate) service: &'a str,
}

impl<'a> ServiceIdRef<'a> {
    pub(crate) fn parse(uri: &'a str) -> Option<Self> {
        mesh_auth::parse_spiffe_id(uri).ok()?;
        let mut parts = uri.strip_prefix("spiffe://")?.split('/');
        let trust_domain = parts.next()?;
        let mut next = parts.next()?;
        let mut partition = None;
        if next == "ap" {
            partition = Some(parts.next()?).filter(|p| *p != "default");
            next = parts.next()?;
        }
        let (ns, namespace, dc, datacenter, svc, service) = (
            next,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if (ns, dc, svc) != ("ns", "dc", "svc") || parts.next().is_some() {
            return None;
        }
        Some(Self {
            trust_domain,
            partition,
            namespace,
            datacenter,
            service,
        })
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        if let Some(p) = &self.partition {
            write!(f, "/ap/{p}")?;
        }
        write!(
            f,
            "/ns/{}/dc/{}/svc/{}",
            self.namespace, self.datacenter, self.service
        )
    }
}

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
        mesh_auth::parse_spiffe_id(uri).ok()?;
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next()?.to_owned();
        let segs: Vec<&str> = parts.collect();
        let (partition, segs) = match segs.as_slice() {
            ["ap", p, rest @ ..] => (Some((*p).to_owned()), rest),
            s => (None, s),
        };
        match segs {
            ["ns", ns, "dc", dc, "svc", svc] => Some(Self {
                trust_domain,
                partition: partition.filter(|p| p != "default"),
                namespace: (*ns).to_owned(),
                datacenter: (*dc).to_owned(),
                service: (*svc).to_owned(),
            }),
            _ => None,
        }
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

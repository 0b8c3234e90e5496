//! The JSON of Consul's Connect endpoints, as the agent sends it (Go's
//! `api.LeafCert`, `api.CARootList`, `api.CARoot`, `api.Intention`,
//! `api.IntentionPermission`, `api.IntentionHTTPPermission`,
//! `api.IntentionHTTPHeaderPermission`). Fields the mesh does not use are
//! ignored; `null` lists and maps read as empty.

use serde::Deserialize;

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `GET /v1/agent/connect/ca/leaf/:service`: this service's certificate.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct LeafCert {
    /// The serial number, colon-separated hex.
    #[serde(default)]
    pub serial_number: String,
    /// The certificate, then any intermediates (during a CA rotation, the
    /// new root cross-signed by the old one), PEM.
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    /// The private key, PEM. Never printed by `Debug`.
    #[serde(rename = "PrivateKeyPEM")]
    pub private_key_pem: String,
    /// The service it was issued for.
    #[serde(default)]
    pub service: String,
    /// Its SPIFFE ID: `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`.
    #[serde(rename = "ServiceURI", default)]
    pub service_uri: String,
    /// Not valid before (RFC 3339).
    #[serde(default)]
    pub valid_after: String,
    /// Not valid after (RFC 3339).
    #[serde(default)]
    pub valid_before: String,
    /// Raft index of the last change.
    #[serde(default)]
    pub modify_index: u64,
}

impl std::fmt::Debug for LeafCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCert")
            .field("serial_number", &self.serial_number)
            .field("service_uri", &self.service_uri)
            .field("valid_before", &self.valid_before)
            .field("private_key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// `GET /v1/agent/connect/ca/roots`: the CA roots every Connect peer trusts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct CaRoots {
    /// The `ID` of the root that signs new leaves.
    #[serde(rename = "ActiveRootID", default)]
    pub active_root_id: String,
    /// The cluster's trust domain, `<cluster-id>.consul`.
    pub trust_domain: String,
    /// Every root still trusted: the active one and, after a rotation,
    /// the previous ones until they expire.
    #[serde(default, deserialize_with = "null_as_default")]
    pub roots: Vec<CaRoot>,
}

/// One CA root.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct CaRoot {
    /// Its ID (the signing key's ID).
    #[serde(rename = "ID")]
    pub id: String,
    /// A human-readable name.
    #[serde(default)]
    pub name: String,
    /// The root certificate, PEM.
    pub root_cert: String,
    /// Intermediates (secondary datacenters, cross-signed roots), PEM.
    #[serde(default, deserialize_with = "null_as_default")]
    pub intermediate_certs: Vec<String>,
    /// Whether it signs new leaves.
    #[serde(default)]
    pub active: bool,
}

impl CaRoots {
    /// Every root certificate, PEM, one after the other: the trust bundle.
    pub fn bundle_pem(&self) -> String {
        let mut out = String::new();
        for r in &self.roots {
            out.push_str(r.root_cert.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One intention, as `/v1/connect/intentions/match` lists them (highest
/// precedence first).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct Intention {
    /// Its ID (empty for intentions kept as config entries only).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The source service's namespace (`*` for any; empty means default).
    #[serde(rename = "SourceNS", default)]
    pub source_ns: String,
    /// The source service (`*` for any).
    pub source_name: String,
    /// The destination service (`*` for any).
    #[serde(default)]
    pub destination_name: String,
    /// `allow` or `deny` for an L4 intention; empty for an L7 one.
    #[serde(default)]
    pub action: String,
    /// The L7 permissions, in order; the first that matches decides.
    #[serde(default, deserialize_with = "null_as_default")]
    pub permissions: Vec<IntentionPermission>,
    /// Higher applies first (Consul sorts by it).
    #[serde(default)]
    pub precedence: u64,
}

/// One L7 permission of an intention.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct IntentionPermission {
    /// `allow` or `deny`.
    pub action: String,
    /// What the request must look like (HTTP only).
    #[serde(rename = "HTTP", default)]
    pub http: Option<IntentionHttp>,
}

/// The HTTP part of an L7 permission: path, methods and headers, all of
/// which must match.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct IntentionHttp {
    /// The path, exactly.
    #[serde(default)]
    pub path_exact: String,
    /// A path prefix (string prefix, as Envoy matches it).
    #[serde(default)]
    pub path_prefix: String,
    /// A path regex (RE2). Not evaluated by mesh: see the module docs.
    #[serde(default)]
    pub path_regex: String,
    /// Allowed methods; empty means any.
    #[serde(default, deserialize_with = "null_as_default")]
    pub methods: Vec<String>,
    /// Header conditions, all of which must hold.
    #[serde(default, deserialize_with = "null_as_default")]
    pub header: Vec<IntentionHeader>,
}

/// One header condition of an L7 permission.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct IntentionHeader {
    /// The header name.
    pub name: String,
    /// The header is present (any value).
    #[serde(default)]
    pub present: bool,
    /// The value, exactly.
    #[serde(default)]
    pub exact: String,
    /// A value prefix.
    #[serde(default)]
    pub prefix: String,
    /// A value suffix.
    #[serde(default)]
    pub suffix: String,
    /// A value regex (RE2). Not evaluated by mesh: see the module docs.
    #[serde(default)]
    pub regex: String,
    /// Negates the condition.
    #[serde(default)]
    pub invert: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_consul_shapes() {
        let roots: CaRoots = serde_json::from_str(
            r#"{"ActiveRootID":"a:b","TrustDomain":"11111111-2222-3333-4444-555555555555.consul",
                "Roots":[{"ID":"a:b","Name":"Consul CA Root Cert","SerialNumber":7,
                "RootCert":"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
                "IntermediateCerts":null,"Active":true,"CreateIndex":8,"ModifyIndex":8}]}"#,
        )
        .unwrap();
        assert_eq!(roots.roots.len(), 1);
        assert!(roots.roots[0].active);
        let m: std::collections::BTreeMap<String, Vec<Intention>> = serde_json::from_str(
            r#"{"db":[{"ID":"x","SourceNS":"default","SourceName":"web","DestinationName":"db",
                "Action":"","Permissions":[{"Action":"allow","HTTP":{"PathPrefix":"/v1","Methods":["GET"],
                "Header":[{"Name":"x-env","Exact":"prod"}]}}],"Precedence":9}]}"#,
        )
        .unwrap();
        let i = &m["db"][0];
        assert_eq!(i.permissions[0].http.as_ref().unwrap().methods, ["GET"]);
        let leaf: LeafCert = serde_json::from_str(
            r#"{"SerialNumber":"1","CertPEM":"c","PrivateKeyPEM":"secret-key","Service":"web",
                "ServiceURI":"spiffe://td/ns/default/dc/dc1/svc/web","ValidAfter":"x","ValidBefore":"y"}"#,
        )
        .unwrap();
        assert!(!format!("{leaf:?}").contains("secret-key"));
    }
}

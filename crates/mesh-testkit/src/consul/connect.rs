//! The fake's Connect CA and intentions: roots, leaf certificates with
//! Consul's SPIFFE URI shape, root rotation with cross-signing, and the
//! intentions table with its precedence order.
//!
//! Everything here lives behind one mutex and one index (`index`), raised by
//! every Connect write; each endpoint answers with its own table's index
//! (roots, a service's leaf, intentions) and a blocking query waits for that
//! one to pass the index it was given.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::state::DATACENTER;

/// Consul's default leaf lifetime (`leaf_cert_ttl`, 72 h).
pub(crate) const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);
/// The agent renews a leaf after this fraction of its lifetime (Consul
/// renews somewhere between 60 % and 90 %; the fake picks a fixed point so
/// tests can predict it).
const RENEW_AT: f64 = 0.8;

struct Root {
    id: String,
    name: String,
    serial: u64,
    params: CertificateParams,
    key: KeyPair,
    pem: String,
    /// This root's certificate signed by the root before it, sent as an
    /// intermediate with every leaf this root signs, so peers that only
    /// know the old root still verify new leaves during a rotation.
    cross_signed: Option<String>,
    active: bool,
    not_before: SystemTime,
    not_after: SystemTime,
    create_index: u64,
    modify_index: u64,
}

pub(crate) struct Leaf {
    serial: u64,
    /// The leaf, then its intermediates (the cross-signed root, if any).
    pub(crate) cert_pem: String,
    key_pem: String,
    service: String,
    uri: String,
    valid_after: SystemTime,
    valid_before: SystemTime,
    /// When the agent replaces it (80 % of its lifetime).
    pub(crate) renew_at: Instant,
    pub(crate) index: u64,
    create_index: u64,
}

struct IntentionState {
    id: String,
    source: String,
    destination: String,
    action: Option<String>,
    permissions: Option<Value>,
    description: String,
    create_index: u64,
    modify_index: u64,
}

impl IntentionState {
    /// Consul's precedence for the default namespace: exact beats wildcard,
    /// and the destination counts more than the source.
    fn precedence(&self) -> u64 {
        match (self.source == "*", self.destination == "*") {
            (false, false) => 9,
            (true, false) => 8,
            (false, true) => 6,
            (true, true) => 5,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "ID": self.id,
            "Description": self.description,
            "SourceNS": "default",
            "SourceName": self.source,
            "DestinationNS": "default",
            "DestinationName": self.destination,
            "SourcePartition": "default",
            "DestinationPartition": "default",
            "SourceType": "consul",
            "Meta": {},
            "Precedence": self.precedence(),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        });
        if let Some(obj) = v.as_object_mut() {
            // An L7 intention has `Permissions` and no `Action`.
            obj.insert(
                "Action".into(),
                json!(self.action.clone().unwrap_or_default()),
            );
            if let Some(p) = &self.permissions {
                obj.insert("Permissions".into(), p.clone());
            }
        }
        v
    }
}

/// The Connect CA, its leaves and the intentions of one fake agent.
pub(crate) struct ConnectState {
    pub(crate) trust_domain: String,
    cluster_id: String,
    /// Raised by every Connect write.
    pub(crate) index: u64,
    roots: Vec<Root>,
    pub(crate) roots_index: u64,
    pub(crate) leaves: BTreeMap<String, Leaf>,
    pub(crate) leaf_ttl: Duration,
    intentions: Vec<IntentionState>,
    pub(crate) intentions_index: u64,
    next_serial: u64,
}

impl std::fmt::Debug for ConnectState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectState")
            .field("trust_domain", &self.trust_domain)
            .field("index", &self.index)
            .field("roots", &self.roots.len())
            .field("leaves", &self.leaves.len())
            .field("intentions", &self.intentions.len())
            .finish()
    }
}

fn uuid() -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..),
        fastrand::u16(..),
        fastrand::u64(..) & 0xffff_ffff_ffff
    )
}

fn colon_hex(n: u64) -> String {
    n.to_be_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl ConnectState {
    pub(crate) fn new() -> Self {
        let cluster_id = uuid();
        let mut state = Self {
            trust_domain: format!("{cluster_id}.consul"),
            cluster_id,
            index: 1,
            roots: Vec::new(),
            roots_index: 1,
            leaves: BTreeMap::new(),
            leaf_ttl: DEFAULT_LEAF_TTL,
            intentions: Vec::new(),
            intentions_index: 1,
            next_serial: 1,
        };
        state.add_root();
        state
    }

    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// A new active root, cross-signed by the previous active one.
    fn add_root(&mut self) {
        let serial = self.serial();
        let index = self.bump();
        let key = KeyPair::generate().expect("ECDSA P-256 key generation");
        let mut params = CertificateParams::default();
        let name = format!("Consul CA Primary Cert {serial}");
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("pri-{serial:x}.consul.ca.{}", &self.cluster_id[..8]),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{}", self.trust_domain)
                .try_into()
                .expect("a valid URI"),
        )];
        let now = SystemTime::now();
        let not_before = now - Duration::from_secs(60);
        let not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.use_authority_key_identifier_extension = true;
        let pem = params.self_signed(&key).expect("self-signed root").pem();
        let cross_signed = self.roots.iter().find(|r| r.active).map(|old| {
            let issuer = Issuer::from_params(&old.params, &old.key);
            params
                .signed_by(&key, &issuer)
                .expect("cross-signed root")
                .pem()
        });
        for r in &mut self.roots {
            if r.active {
                r.active = false;
                r.modify_index = index;
            }
        }
        self.roots.push(Root {
            id: colon_hex(fastrand::u64(..)),
            name,
            serial,
            params,
            key,
            pem,
            cross_signed,
            active: true,
            not_before,
            not_after,
            create_index: index,
            modify_index: index,
        });
        self.roots_index = index;
    }

    /// Rotates the CA: a new root, cross-signed by the old one, and new
    /// leaves for every service, signed by it. The old root stays in the
    /// list (inactive) until [`prune_roots`](Self::prune_roots).
    pub(crate) fn rotate_roots(&mut self) {
        self.add_root();
        let services: Vec<String> = self.leaves.keys().cloned().collect();
        for s in services {
            self.issue_leaf(&s);
        }
    }

    /// Drops the inactive roots, as Consul does once they expire.
    pub(crate) fn prune_roots(&mut self) {
        let index = self.bump();
        self.roots.retain(|r| r.active);
        self.roots_index = index;
    }

    pub(crate) fn service_uri(&self, service: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/{DATACENTER}/svc/{service}",
            self.trust_domain
        )
    }

    /// Issues (or re-issues) the leaf of `service` from the active root.
    pub(crate) fn issue_leaf(&mut self, service: &str) {
        let serial = self.serial();
        let index = self.bump();
        let uri = self.service_uri(service);
        let root = self
            .roots
            .iter()
            .find(|r| r.active)
            .expect("there is always an active root");
        let key = KeyPair::generate().expect("ECDSA P-256 key generation");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, service.to_owned());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(uri.clone().try_into().expect("a valid URI"))];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let valid_after = now - Duration::from_secs(60);
        let valid_before = now + self.leaf_ttl;
        params.not_before = valid_after.into();
        params.not_after = valid_before.into();
        let issuer = Issuer::from_params(&root.params, &root.key);
        let mut cert_pem = params.signed_by(&key, &issuer).expect("leaf").pem();
        if let Some(cross) = &root.cross_signed {
            cert_pem.push_str(cross);
        }
        let create_index = self.leaves.get(service).map_or(index, |l| l.create_index);
        self.leaves.insert(
            service.to_owned(),
            Leaf {
                serial,
                cert_pem,
                key_pem: key.serialize_pem(),
                service: service.to_owned(),
                uri,
                valid_after,
                valid_before,
                renew_at: Instant::now() + self.leaf_ttl.mul_f64(RENEW_AT),
                index,
                create_index,
            },
        );
    }

    /// The leaf of `service`, issued on first use and renewed when due.
    pub(crate) fn leaf(&mut self, service: &str) -> &Leaf {
        let due = self
            .leaves
            .get(service)
            .is_none_or(|l| Instant::now() >= l.renew_at);
        if due {
            self.issue_leaf(service);
        }
        &self.leaves[service]
    }

    pub(crate) fn leaf_json(leaf: &Leaf) -> Value {
        json!({
            "SerialNumber": colon_hex(leaf.serial),
            "CertPEM": leaf.cert_pem,
            "PrivateKeyPEM": leaf.key_pem,
            "Service": leaf.service,
            "ServiceURI": leaf.uri,
            "ValidAfter": rfc3339(leaf.valid_after),
            "ValidBefore": rfc3339(leaf.valid_before),
            "Namespace": "default",
            "Partition": "default",
            "CreateIndex": leaf.create_index,
            "ModifyIndex": leaf.index,
        })
    }

    pub(crate) fn roots_json(&self) -> Value {
        let active = self.roots.iter().find(|r| r.active);
        json!({
            "ActiveRootID": active.map(|r| r.id.clone()).unwrap_or_default(),
            "TrustDomain": self.trust_domain,
            "Roots": self.roots.iter().map(|r| json!({
                "ID": r.id,
                "Name": r.name,
                "SerialNumber": r.serial,
                "SigningKeyID": r.id,
                "ExternalTrustDomain": self.cluster_id,
                "NotBefore": rfc3339(r.not_before),
                "NotAfter": rfc3339(r.not_after),
                "RootCert": r.pem,
                "IntermediateCerts": r.cross_signed.iter().collect::<Vec<_>>(),
                "Active": r.active,
                "PrivateKeyType": "ec",
                "PrivateKeyBits": 256,
                "CreateIndex": r.create_index,
                "ModifyIndex": r.modify_index,
            })).collect::<Vec<_>>(),
        })
    }

    /// Every root certificate, PEM, concatenated (what a client should trust).
    pub(crate) fn roots_pem(&self) -> String {
        self.roots.iter().map(|r| r.pem.as_str()).collect()
    }

    /// Creates or replaces the intention `source -> destination`.
    pub(crate) fn upsert_intention(
        &mut self,
        source: &str,
        destination: &str,
        action: Option<String>,
        permissions: Option<Value>,
        description: String,
    ) {
        let index = self.bump();
        self.intentions_index = index;
        if let Some(i) = self
            .intentions
            .iter_mut()
            .find(|i| i.source == source && i.destination == destination)
        {
            i.action = action;
            i.permissions = permissions;
            i.description = description;
            i.modify_index = index;
            return;
        }
        self.intentions.push(IntentionState {
            id: uuid(),
            source: source.to_owned(),
            destination: destination.to_owned(),
            action,
            permissions,
            description,
            create_index: index,
            modify_index: index,
        });
    }

    /// Deletes the intention `source -> destination`; whether it existed.
    pub(crate) fn delete_intention(&mut self, source: &str, destination: &str) -> bool {
        let before = self.intentions.len();
        self.intentions
            .retain(|i| !(i.source == source && i.destination == destination));
        if self.intentions.len() == before {
            return false;
        }
        self.intentions_index = self.bump();
        true
    }

    pub(crate) fn exact_intention(&self, source: &str, destination: &str) -> Option<Value> {
        self.intentions
            .iter()
            .find(|i| i.source == source && i.destination == destination)
            .map(IntentionState::to_json)
    }

    /// The intentions that apply to `name` as a destination (or a source),
    /// highest precedence first: `/v1/connect/intentions/match`.
    pub(crate) fn matching(&self, by_destination: bool, name: &str) -> Vec<Value> {
        let mut found: Vec<&IntentionState> = self
            .intentions
            .iter()
            .filter(|i| {
                let side = if by_destination {
                    &i.destination
                } else {
                    &i.source
                };
                side == name || side == "*"
            })
            .collect();
        found.sort_by(|a, b| {
            b.precedence()
                .cmp(&a.precedence())
                .then_with(|| a.id.cmp(&b.id))
        });
        found.into_iter().map(IntentionState::to_json).collect()
    }
}

//! The hot path of a watch: a `/v1/health/service/:service` body to endpoints.
//!
//! A watch of a large service re-reads the whole answer every time anything
//! in it changes (one instance flapping re-sends all 10,000), so this parse is
//! what a busy watch spends its CPU on. Four things keep it cheap:
//!
//! - only the fields an [`Endpoint`] needs are read, through the validating
//!   [`json`](super::json) reader; the rest of the ~1 KB per instance (node
//!   metadata, tagged addresses, check output, ...) is skipped by a scanner
//!   that still checks the JSON grammar;
//! - the entries of an answer look alike: the reader remembers the members
//!   of the last entry, node, service and check, reads a repeated member name
//!   with a word comparison, passes over a skipped member that repeats byte
//!   for byte (`"Datacenter":"dc1"`, `"Notes":""`, ...) with one comparison,
//!   and keeps the port, tags, metadata and weights read from a value the
//!   next entry repeats; repeated bytes are the JSON already checked, so
//!   validation is unchanged;
//! - strings are borrowed from the body, not copied, until an endpoint is
//!   built, and endpoints with the same tags or metadata share one copy;
//! - with the previous snapshot at hand ([`parse_health_update`]), an instance
//!   that did not change comes back as the *same* [`Endpoint`] (a
//!   reference-count increment, no allocation), so publishing and diffing it
//!   costs a pointer comparison.
//!
//! The reader accepts what the typed model ([`HealthEntry`](super::HealthEntry))
//! accepts in Consul's object form and reads it the same way; the fuzz target
//! `fuzz/fuzz_targets/consul_health.rs` and `tests/prop_consul.rs` hold it to
//! that. Object members may come in any order, unknown ones are skipped, a
//! member read twice is an error (as with serde's derive).

use std::borrow::Cow;
use std::cmp::Ordering;

use mesh_core::{Address, Endpoint, EndpointKey};

use super::json::{InvalidJson, Reader, Result, Shape};
use crate::error::{DiscoveryError, ErrorKind};
use crate::source::EndpointSet;

/// How a health answer's instances with bad addresses are treated.
#[derive(Debug, Default)]
pub(crate) struct ParseReport {
    pub(crate) skipped: usize,
    pub(crate) first_skip: Option<DiscoveryError>,
}

/// Parses a `/v1/health/service/:service` body into endpoints.
///
/// An instance with an unusable address (empty, port 0, not a host name) is
/// skipped rather than failing the whole answer; a body that is not the
/// expected JSON is an [`ErrorKind::Decode`] error whose source is an
/// [`InvalidJson`] naming what was wrong and where.
///
/// # Example
///
/// ```
/// use mesh_discovery::consul::parse_health;
///
/// let body = br#"[{"Node": {"Node": "n1", "Address": "10.0.0.1"},
///                  "Service": {"ID": "web-1", "Service": "web", "Address": "", "Port": 8080},
///                  "Checks": [{"CheckID": "serfHealth", "Status": "passing"}]}]"#;
/// let endpoints = parse_health(body)?;
/// assert_eq!(endpoints[0].key().as_str(), "n1/web-1");
/// assert_eq!(endpoints[0].address().to_string(), "10.0.0.1:8080");
///
/// let err = parse_health(br#"[{"Node": {"Node": "n1"}"#).unwrap_err();
/// assert_eq!(err.kind(), mesh_discovery::ErrorKind::Decode);
/// # Ok::<(), mesh_discovery::DiscoveryError>(())
/// ```
pub fn parse_health(body: &[u8]) -> std::result::Result<Vec<Endpoint>, DiscoveryError> {
    parse_health_report(body, None).map(|(e, _)| e)
}

/// Like [`parse_health`], but an instance equal to one in `previous` (same
/// key, address, weight, tags and metadata) comes back as that very
/// [`Endpoint`], so [`EndpointSet::diff`] and the publisher's "did anything
/// change" test see it unchanged by pointer, and nothing is allocated for it.
///
/// This is what [`ConsulDiscovery`](super::ConsulDiscovery) calls with the set
/// it published last.
///
/// # Example
///
/// ```
/// use mesh_discovery::EndpointSet;
/// use mesh_discovery::consul::{parse_health, parse_health_update};
///
/// let body = br#"[{"Node": {"Node": "n1", "Address": "10.0.0.1"},
///                  "Service": {"ID": "web-1", "Service": "web", "Port": 8080}}]"#;
/// let previous = EndpointSet::new(parse_health(body)?);
/// let again = parse_health_update(body, &previous)?;
/// assert!(again[0].ptr_eq(&previous.endpoints()[0]));
/// # Ok::<(), mesh_discovery::DiscoveryError>(())
/// ```
pub fn parse_health_update(
    body: &[u8],
    previous: &EndpointSet,
) -> std::result::Result<Vec<Endpoint>, DiscoveryError> {
    parse_health_report(body, Some(previous)).map(|(e, _)| e)
}

pub(crate) fn parse_health_report(
    body: &[u8],
    previous: Option<&EndpointSet>,
) -> std::result::Result<(Vec<Endpoint>, ParseReport), DiscoveryError> {
    // One UTF-8 check of the whole body (a fast ASCII path in std); after it
    // every string can be borrowed as `&str`.
    let text = std::str::from_utf8(body).map_err(|e| {
        DiscoveryError::new(ErrorKind::Decode, "health response is not valid UTF-8").with_source(e)
    })?;
    let mut parser = Parser {
        reader: Reader::new(text),
        previous: previous.map_or(&[][..], EndpointSet::endpoints),
        cursor: 0,
        key: String::new(),
        entry: Entry::default(),
        shapes: Shapes::default(),
        out: Vec::new(),
        report: ParseReport::default(),
    };
    parser.answer().map_err(|e| {
        DiscoveryError::new(ErrorKind::Decode, "health response is not valid JSON").with_source(e)
    })?;
    Ok((parser.out, parser.report))
}

// ===== the fields of one entry =====

/// What discovery reads from one health entry, borrowed from the body. Kept
/// across entries so its vectors are allocated once per answer.
///
/// Port, tags, metadata and weights are kept from one entry to the next,
/// with the text of the value each was read from: the instances of a
/// service mostly carry the same ones, so when the next entry's value is the
/// same text ([`Reader::repeats`]) what was read from it still holds.
/// [`Parser::service`] sets them to their defaults when its object lacks
/// them.
#[derive(Default)]
struct Entry<'a> {
    node: Option<Cow<'a, str>>,
    node_address: Cow<'a, str>,
    id: Option<Cow<'a, str>>,
    address: Cow<'a, str>,
    port: u16,
    port_text: &'a [u8],
    passing: u32,
    warning_weight: u32,
    weights_text: &'a [u8],
    warning: bool,
    tags: Vec<Cow<'a, str>>,
    tags_text: &'a [u8],
    meta: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    meta_text: &'a [u8],
}

impl Entry<'_> {
    fn reset(&mut self) {
        self.node = None;
        self.node_address = Cow::Borrowed("");
        self.id = None;
        self.address = Cow::Borrowed("");
        self.warning = false;
    }

    fn weight(&self) -> u32 {
        if self.warning {
            self.warning_weight
        } else {
            self.passing
        }
    }

    /// True when `ep` says exactly what this entry says (the key is already
    /// known to match).
    fn same_as(&self, ep: &Endpoint, address: &Address) -> bool {
        ep.address() == address
            && ep.weight() == self.weight()
            && self.same_tags(ep)
            && self.same_meta(ep)
    }

    fn same_tags(&self, ep: &Endpoint) -> bool {
        ep.tags().len() == self.tags.len() && ep.tags().iter().zip(&self.tags).all(|(a, b)| a == b)
    }

    fn same_meta(&self, ep: &Endpoint) -> bool {
        ep.metadata().len() == self.meta.len()
            // Equal only when the body's keys are sorted and unique, as
            // Consul sends them; otherwise the endpoint is simply rebuilt.
            && ep
                .metadata()
                .iter()
                .zip(&self.meta)
                .all(|((k, v), (bk, bv))| k == bk && v == bv)
    }
}

/// A member of an object that may appear once.
fn once<T>(slot: &mut Option<T>, value: T, reader: &Reader<'_>, name: &str) -> Result<()> {
    if slot.is_some() {
        return Err(reader.error(format!("duplicate field `{name}`")));
    }
    *slot = Some(value);
    Ok(())
}

/// Tracks members read once where the value itself has a default.
#[derive(Default)]
struct Seen(u16);

impl Seen {
    fn mark(&mut self, bit: u16, reader: &Reader<'_>, name: &str) -> Result<()> {
        if self.0 & bit != 0 {
            return Err(reader.error(format!("duplicate field `{name}`")));
        }
        self.0 |= bit;
        Ok(())
    }

    fn has(&self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

// The members of `Service` that `Seen` tracks.
const ADDRESS: u16 = 1;
const PORT: u16 = 2;
const TAGS: u16 = 4;
const META: u16 = 8;
const WEIGHTS: u16 = 16;

/// Compares an endpoint key with `node/id` without building it.
fn cmp_key(key: &str, node: &str, id: &str) -> Ordering {
    let (key, node) = (key.as_bytes(), node.as_bytes());
    let head = &key[..key.len().min(node.len())];
    match head.cmp(node) {
        Ordering::Equal if key.len() == node.len() => Ordering::Less,
        Ordering::Equal => key[node.len()]
            .cmp(&b'/')
            .then_with(|| key[node.len() + 1..].cmp(id.as_bytes())),
        other => other,
    }
}

// ===== the parser =====

/// The members of the last entry, node, service and check read: the next
/// one most likely repeats their names and many of the values skipped (see
/// [`Reader::member`]). Checks keep one shape per position in `Checks`
/// (Consul lists the node's checks, then the service's, in a stable order),
/// the last one shared by any further checks.
#[derive(Default)]
struct Shapes<'a> {
    entry: Shape<'a>,
    node: Shape<'a>,
    service: Shape<'a>,
    check: [Shape<'a>; CHECK_SHAPES],
}

const CHECK_SHAPES: usize = 4;

// Nesting levels, for the reader's depth limit: the answer's array is 1, an
// entry 2, its `Node`, `Service` and `Checks` 3, what they hold 4.
const PART: u32 = 3;
const INNER: u32 = 4;

struct Parser<'a, 'p> {
    reader: Reader<'a>,
    previous: &'p [Endpoint],
    /// Where in `previous` the next entry's key is expected: Consul sends
    /// entries in a stable order, so most lookups are one comparison.
    cursor: usize,
    key: String,
    entry: Entry<'a>,
    shapes: Shapes<'a>,
    out: Vec<Endpoint>,
    report: ParseReport,
}

impl<'a> Parser<'a, '_> {
    fn answer(&mut self) -> Result<()> {
        self.reader
            .expect(b'[', "expected a JSON array of health entries")?;
        self.out.reserve(self.previous.len());
        let mut first = true;
        while self.reader.more(&mut first, b']')? {
            self.entry()?;
            self.finish_entry();
        }
        self.reader.end()
    }

    fn entry(&mut self) -> Result<()> {
        self.entry.reset();
        self.reader.expect(b'{', "expected a health entry object")?;
        let (mut node, mut service, mut checks) = (false, false, false);
        let mut first = true;
        self.shapes.entry.start();
        while let Some(key) = self.reader.member(&mut first, &mut self.shapes.entry)? {
            match &*key {
                b"Node" => {
                    dup(node, &self.reader, "Node")?;
                    node = true;
                    self.node()?;
                }
                b"Service" => {
                    dup(service, &self.reader, "Service")?;
                    service = true;
                    self.service()?;
                }
                b"Checks" => {
                    dup(checks, &self.reader, "Checks")?;
                    checks = true;
                    self.checks()?;
                }
                _ => self.reader.skip_member(PART, &mut self.shapes.entry)?,
            }
        }
        if !node {
            return Err(self.reader.error("missing field `Node`"));
        }
        if !service {
            return Err(self.reader.error("missing field `Service`"));
        }
        Ok(())
    }

    fn node(&mut self) -> Result<()> {
        let r = &mut self.reader;
        r.expect(b'{', "expected the `Node` object")?;
        let mut seen = Seen::default();
        let mut first = true;
        let shape = &mut self.shapes.node;
        shape.start();
        while let Some(key) = r.member(&mut first, shape)? {
            match &*key {
                b"Node" => {
                    let v = r.string()?;
                    once(&mut self.entry.node, v, r, "Node")?;
                }
                b"Address" => {
                    seen.mark(1, r, "Address")?;
                    self.entry.node_address = r.string()?;
                }
                _ => r.skip_member(INNER, shape)?,
            }
        }
        if self.entry.node.is_none() {
            return Err(r.error("missing field `Node` in `Node`"));
        }
        Ok(())
    }

    fn service(&mut self) -> Result<()> {
        let r = &mut self.reader;
        r.expect(b'{', "expected the `Service` object")?;
        let mut seen = Seen::default();
        let mut first = true;
        let shape = &mut self.shapes.service;
        shape.start();
        while let Some(key) = r.member(&mut first, shape)? {
            match &*key {
                b"ID" => {
                    let v = r.string()?;
                    once(&mut self.entry.id, v, r, "ID")?;
                }
                b"Address" => {
                    seen.mark(ADDRESS, r, "Address")?;
                    self.entry.address = r.string()?;
                }
                b"Port" => {
                    seen.mark(PORT, r, "Port")?;
                    let e = &mut self.entry;
                    r.unless_repeated(&mut e.port_text, |r| {
                        // `unsigned` rejects anything above the bound.
                        e.port = r.unsigned(u64::from(u16::MAX))? as u16;
                        Ok(())
                    })?;
                }
                b"Tags" => {
                    seen.mark(TAGS, r, "Tags")?;
                    let e = &mut self.entry;
                    r.unless_repeated(&mut e.tags_text, |r| {
                        e.tags.clear();
                        if !r.null()? {
                            r.expect(b'[', "expected `Tags` to be an array or null")?;
                            let mut first = true;
                            while r.more(&mut first, b']')? {
                                e.tags.push(r.string()?);
                            }
                        }
                        Ok(())
                    })?;
                }
                b"Meta" => {
                    seen.mark(META, r, "Meta")?;
                    let e = &mut self.entry;
                    r.unless_repeated(&mut e.meta_text, |r| {
                        e.meta.clear();
                        if !r.null()? {
                            r.expect(b'{', "expected `Meta` to be an object or null")?;
                            let mut first = true;
                            while let Some(k) = r.key(&mut first)? {
                                let v = r.string()?;
                                e.meta.push((k, v));
                            }
                        }
                        Ok(())
                    })?;
                }
                b"Weights" => {
                    seen.mark(WEIGHTS, r, "Weights")?;
                    let e = &mut self.entry;
                    r.unless_repeated(&mut e.weights_text, |r| {
                        (e.passing, e.warning_weight) =
                            if r.null()? { (1, 1) } else { weights(r)? };
                        Ok(())
                    })?;
                }
                _ => r.skip_member(INNER, shape)?,
            }
        }
        if self.entry.id.is_none() {
            return Err(r.error("missing field `ID` in `Service`"));
        }
        // What the object lacked takes its default (and matches no text).
        let e = &mut self.entry;
        if !seen.has(PORT) {
            (e.port, e.port_text) = (0, b"");
        }
        if !seen.has(TAGS) {
            e.tags.clear();
            e.tags_text = b"";
        }
        if !seen.has(META) {
            e.meta.clear();
            e.meta_text = b"";
        }
        if !seen.has(WEIGHTS) {
            (e.passing, e.warning_weight, e.weights_text) = (1, 1, b"");
        }
        Ok(())
    }

    fn checks(&mut self) -> Result<()> {
        let r = &mut self.reader;
        if r.null()? {
            return Ok(());
        }
        r.expect(b'[', "expected `Checks` to be an array or null")?;
        let mut first = true;
        let mut index = 0;
        while r.more(&mut first, b']')? {
            r.expect(b'{', "expected a check object")?;
            let mut status = false;
            let mut first = true;
            let shape = &mut self.shapes.check[index];
            index = (index + 1).min(CHECK_SHAPES - 1);
            shape.start();
            while let Some(key) = r.member(&mut first, shape)? {
                if *key == *b"Status" {
                    dup(status, r, "Status")?;
                    status = true;
                    // Nearly every check passes: a plain comparison first.
                    if !r.repeats(br#""passing""#) && r.string()? == "warning" {
                        self.entry.warning = true;
                    }
                } else {
                    r.skip_member(INNER + 1, shape)?;
                }
            }
        }
        Ok(())
    }

    /// Turns the entry just read into an endpoint: the previous one when
    /// nothing changed, a new one otherwise, none (counted) when its address
    /// is unusable.
    fn finish_entry(&mut self) {
        let e = &self.entry;
        let (Some(node), Some(id)) = (e.node.as_deref(), e.id.as_deref()) else {
            return; // `entry` fails before this when either is missing
        };
        let host = if e.address.is_empty() {
            &*e.node_address
        } else {
            &*e.address
        };
        let bad = |what: &str| {
            DiscoveryError::invalid_response(format!("instance {node}/{id} has {what}"))
        };
        let address = match (e.port, Address::host(host, e.port)) {
            (0, _) => Err(bad("port 0")),
            (_, Err(err)) => Err(bad("a bad address").with_source(err)),
            (_, Ok(a)) => Ok(a),
        };
        let address = match address {
            Ok(a) => a,
            Err(err) => {
                self.report.skipped += 1;
                self.report.first_skip.get_or_insert(err);
                return;
            }
        };
        let prev = find_previous(self.previous, &mut self.cursor, node, id);
        if let Some(prev) = prev
            && e.same_as(prev, &address)
        {
            self.out.push(prev.clone());
            return;
        }
        self.key.clear();
        self.key.push_str(node);
        self.key.push('/');
        self.key.push_str(id);
        let endpoint =
            Endpoint::new(EndpointKey::new(self.key.as_str()), address).with_weight(e.weight());
        // Instances of one service mostly carry the same tags and metadata:
        // share them with this key's previous endpoint or, failing that, the
        // one built just before, instead of allocating a copy per instance.
        let template = prev.or(self.out.last());
        let endpoint = match template {
            Some(t) if e.same_tags(t) => endpoint.with_tags_of(t),
            _ => endpoint.with_tags(e.tags.iter().map(|t| String::from(&**t))),
        };
        let endpoint = match template {
            Some(t) if e.same_meta(t) => endpoint.with_metadata_of(t),
            _ if e.meta.is_empty() => endpoint,
            _ => endpoint.with_metadata(
                e.meta
                    .iter()
                    .map(|(k, v)| (String::from(&**k), String::from(&**v))),
            ),
        };
        self.out.push(endpoint);
    }
}

/// The endpoint of `previous` keyed `node/id`: first where the last one was
/// found, else by binary search.
fn find_previous<'p>(
    previous: &'p [Endpoint],
    cursor: &mut usize,
    node: &str,
    id: &str,
) -> Option<&'p Endpoint> {
    if let Some(ep) = previous.get(*cursor)
        && cmp_key(ep.key().as_str(), node, id) == Ordering::Equal
    {
        *cursor += 1;
        return Some(ep);
    }
    let at = previous
        .binary_search_by(|ep| cmp_key(ep.key().as_str(), node, id))
        .ok()?;
    *cursor = at + 1;
    Some(&previous[at])
}

fn dup(seen: bool, reader: &Reader<'_>, name: &str) -> Result<()> {
    if seen {
        return Err(reader.error(format!("duplicate field `{name}`")));
    }
    Ok(())
}

/// `{"Passing": n, "Warning": n}`: both required, as in [`Weights`](super::Weights).
fn weights(r: &mut Reader<'_>) -> Result<(u32, u32)> {
    r.expect(b'{', "expected `Weights` to be an object or null")?;
    let (mut passing, mut warning) = (None, None);
    let mut first = true;
    while let Some(key) = r.name(&mut first)? {
        let (slot, name) = match &*key {
            b"Passing" => (&mut passing, "Passing"),
            b"Warning" => (&mut warning, "Warning"),
            _ => {
                r.skip(INNER + 1)?;
                continue;
            }
        };
        // `unsigned` rejects anything above the bound.
        let v = r.unsigned(u64::from(u32::MAX))? as u32;
        once(slot, v, r, name)?;
    }
    match (passing, warning) {
        (Some(p), Some(w)) => Ok((p, w)),
        (None, _) => Err(missing(r, "Passing")),
        (_, None) => Err(missing(r, "Warning")),
    }
}

fn missing(r: &Reader<'_>, name: &str) -> InvalidJson {
    r.error(format!("missing field `{name}` in `Weights`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_consul_health_entries_leniently() {
        let body = br#"[
          {"Node":{"ID":"x","Node":"n1","Address":"10.0.0.1","Datacenter":"dc1","TaggedAddresses":null,"Meta":null},
           "Service":{"ID":"web-1","Service":"web","Tags":null,"Address":"","Meta":null,"Port":8080,
                      "TaggedAddresses":{"lan":{"address":"10.0.0.1","port":8080}},"Weights":{"Passing":3,"Warning":1}},
           "Checks":[{"CheckID":"serfHealth","Status":"passing","ServiceID":""}]},
          {"Node":{"Node":"n2","Address":"10.0.0.2"},
           "Service":{"ID":"web-1","Service":"web","Tags":["v2"],"Address":"web.internal","Meta":{"zone":"a"},"Port":9090,
                      "TaggedAddresses":{"LAN":{"Address":"10.0.0.2","Port":9090}}},
           "Checks":[{"CheckID":"c","Status":"warning","ServiceID":"web-1"}]}
        ]"#;
        let eps = parse_health(body).unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].key().as_str(), "n1/web-1");
        assert_eq!(
            eps[0].address().to_string(),
            "10.0.0.1:8080",
            "node address fallback"
        );
        assert_eq!(eps[0].weight(), 3);
        assert!(eps[0].tags().is_empty() && eps[0].metadata().is_empty());
        assert_eq!(
            eps[1].key().as_str(),
            "n2/web-1",
            "same ID on another node is another endpoint"
        );
        assert_eq!(eps[1].address().to_string(), "web.internal:9090");
        assert_eq!(eps[1].weight(), 1, "warning weight");
        assert_eq!(eps[1].tags(), ["v2"]);
    }

    #[test]
    fn bad_instances_are_skipped_and_garbage_is_an_error() {
        let body = br#"[{"Node":{"Node":"n","Address":""},"Service":{"ID":"a","Service":"s","Port":1}},
                        {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"b","Service":"s","Port":0}},
                        {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"c","Service":"s","Port":2}}]"#;
        let (eps, report) = parse_health_report(body, None).unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(report.skipped, 2);
        let not_utf8 = b"[{\"Node\":{\"Node\":\"n\xff\"}}]";
        for garbage in [&b"<html>"[..], b"{}", b"[{\"Node\":1}]", b"", not_utf8] {
            let e = parse_health(garbage).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Decode);
        }
    }

    #[test]
    fn keys_compare_like_the_joined_string() {
        for (key, node, id) in [
            ("n1/a", "n1", "a"),
            ("n1/a", "n1", "b"),
            ("n1/b", "n1", "a"),
            ("n1", "n1", "a"),
            ("n10/a", "n1", "a"),
            ("n1/a", "n10", "a"),
            ("n1-a", "n1", "a"),
            ("", "", ""),
            ("/", "", ""),
            ("a/b/c", "a/b", "c"),
            ("a/b/c", "a", "b/c"),
        ] {
            let joined = format!("{node}/{id}");
            assert_eq!(
                cmp_key(key, node, id),
                key.cmp(joined.as_str()),
                "{key} vs {joined}"
            );
        }
    }

    fn body(entries: &[(&str, &str, u16, &str)]) -> Vec<u8> {
        let entries: Vec<_> = entries
            .iter()
            .map(|(node, id, port, status)| {
                serde_json::json!({
                    "Node": {"Node": node, "Address": "10.0.0.1", "Meta": {"x": [1, {"y": null}]}},
                    "Service": {"ID": id, "Service": "web", "Port": port,
                                "Tags": ["a", "b"], "Meta": {"k": "v", "z": "w"},
                                "Weights": {"Passing": 5, "Warning": 2}},
                    "Checks": [{"Status": status, "Output": "long output\n\twith escapes \u{e9}"}],
                })
            })
            .collect();
        serde_json::to_vec(&entries).unwrap()
    }

    #[test]
    fn update_reuses_unchanged_endpoints_and_rebuilds_changed_ones() {
        let before = body(&[
            ("n1", "a", 80, "passing"),
            ("n1", "b", 80, "passing"),
            ("n2", "a", 80, "passing"),
        ]);
        let previous = EndpointSet::new(parse_health(&before).unwrap());
        let after = body(&[
            ("n2", "a", 80, "warning"), // weight changes, out of order
            ("n1", "a", 80, "passing"),
            ("n1", "b", 81, "passing"), // port changes
            ("n3", "a", 80, "passing"), // new
        ]);
        let fresh = parse_health(&after).unwrap();
        let updated = parse_health_update(&after, &previous).unwrap();
        assert_eq!(fresh, updated, "same content either way");
        let reused: Vec<bool> = updated
            .iter()
            .map(|e| previous.iter().any(|p| p.ptr_eq(e)))
            .collect();
        assert_eq!(reused, [false, true, false, false]);
        assert_eq!(updated[0].weight(), 2);
        assert_eq!(updated[1].metadata().len(), 2);
        let set = EndpointSet::new(updated);
        assert_eq!(previous.diff(&set).len(), 3);
    }

    #[test]
    fn unsorted_or_duplicate_meta_is_rebuilt_the_same_way() {
        let body = br#"[{"Node":{"Node":"n","Address":"10.0.0.1"},
            "Service":{"ID":"a","Port":1,"Meta":{"z":"1","a":"2","z":"3"}}}]"#;
        let previous = EndpointSet::new(parse_health(body).unwrap());
        let again = parse_health_update(body, &previous).unwrap();
        assert_eq!(again, previous.endpoints());
        assert_eq!(again[0].metadata().get("z").map(String::as_str), Some("3"));
    }

    #[test]
    fn wrong_shapes_are_decode_errors_that_say_what() {
        for (body, why) in [
            (&br#"{"Node":{}}"#[..], "expected a JSON array"),
            (br#"[{"Service":{"ID":"a"}}]"#, "missing field `Node`"),
            (br#"[{"Node":{"Node":"n"}}]"#, "missing field `Service`"),
            (
                br#"[{"Node":{"Address":"x"},"Service":{"ID":"a"}}]"#,
                "missing field `Node` in `Node`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"Port":1}}]"#,
                "missing field `ID`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Port":"80"}}]"#,
                "unsigned integer",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Port":70000}}]"#,
                "out of range",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Port":1,"Port":2}}]"#,
                "duplicate field `Port`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Tags":[1]}}]"#,
                "expected a string",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Weights":{"Passing":1}}}]"#,
                "missing field `Warning`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a"},"Checks":[{"Status":null}]}]"#,
                "expected a string",
            ),
            (
                br#"[{"Node":{"Node":"n","Meta":{"a":tru}},"Service":{"ID":"a"}}]"#,
                "expected a JSON value",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a"}}] x"#,
                "trailing characters",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a"}}"#,
                "unexpected end of input",
            ),
        ] {
            let err = parse_health(body).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode);
            let json = std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<InvalidJson>())
                .expect("an InvalidJson source");
            assert!(
                json.reason().contains(why),
                "{}: {json}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

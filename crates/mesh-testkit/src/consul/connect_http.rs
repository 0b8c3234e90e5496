//! The fake's Connect HTTP endpoints: CA roots, leaves, intentions.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::connect::ConnectState;
use super::server::{DropConnection, Resp, connection_fault, reply};
use super::state::parse_go_duration;
use super::{Fault, Shared};

/// Which Connect table a read follows.
enum Table<'a> {
    Roots,
    Leaf(&'a str),
    Intentions,
}

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    segs: &[&str],
    query: &[(String, String)],
    body: &[u8],
) -> Result<Resp, DropConnection> {
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    match (method, segs) {
        (&Method::GET, ["v1", "agent", "connect", "ca", "roots"]) => {
            read(shared, query, Table::Roots).await
        }
        (&Method::GET, ["v1", "agent", "connect", "ca", "leaf", service]) => {
            read(shared, query, Table::Leaf(service)).await
        }
        (&Method::GET, ["v1", "connect", "intentions", "match"]) => {
            let by_destination = match get("by") {
                Some("destination") => true,
                Some("source") => false,
                _ => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        "required query parameter 'by' not set",
                    ));
                }
            };
            if get("name").is_none_or(str::is_empty) {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    "required query parameter 'name' not set",
                ));
            }
            let _ = by_destination;
            read(shared, query, Table::Intentions).await
        }
        (&Method::GET, ["v1", "connect", "intentions", "exact"]) => {
            let (Some(src), Some(dst)) = (get("source"), get("destination")) else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    "required query parameters 'source' and 'destination'",
                ));
            };
            Ok(match shared.connect_lock().exact_intention(src, dst) {
                Some(v) => json_reply(&v, None),
                None => reply(StatusCode::NOT_FOUND, "Intention not found"),
            })
        }
        (&Method::PUT | &Method::POST, ["v1", "connect", "intentions", "exact"]) => {
            let (Some(src), Some(dst)) = (get("source"), get("destination")) else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    "required query parameters 'source' and 'destination'",
                ));
            };
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        format!("Request decode failed: {e}"),
                    ));
                }
            };
            let action = v
                .get("Action")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .map(str::to_owned);
            let permissions = v
                .get("Permissions")
                .filter(|p| p.as_array().is_some_and(|a| !a.is_empty()))
                .cloned();
            match (&action, &permissions) {
                (Some(a), None) if a == "allow" || a == "deny" => {}
                (None, Some(_)) => {}
                _ => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        "Intention must have exactly one of Action (allow or deny) or Permissions",
                    ));
                }
            }
            let description = v
                .get("Description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            shared.connect_write(|c| {
                c.upsert_intention(src, dst, action, permissions, description);
            });
            Ok(reply(StatusCode::OK, "true"))
        }
        (&Method::DELETE, ["v1", "connect", "intentions", "exact"]) => {
            let (Some(src), Some(dst)) = (get("source"), get("destination")) else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    "required query parameters 'source' and 'destination'",
                ));
            };
            shared.connect_write(|c| c.delete_intention(src, dst));
            Ok(reply(StatusCode::OK, "true"))
        }
        (&Method::GET, _) => Ok(reply(StatusCode::NOT_FOUND, "404 page not found")),
        _ => Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

/// The table's index now, and when the agent would change it on its own
/// (a leaf due for renewal).
fn current(c: &mut ConnectState, table: &Table<'_>) -> (u64, Option<Instant>) {
    match table {
        Table::Roots => (c.roots_index, None),
        Table::Leaf(service) => {
            let leaf = c.leaf(service);
            (leaf.index, Some(leaf.renew_at))
        }
        Table::Intentions => (c.intentions_index, None),
    }
}

/// A Connect read, blocking on its table's index when `index` > 0.
async fn read(
    shared: &Arc<Shared>,
    query: &[(String, String)],
    table: Table<'_>,
) -> Result<Resp, DropConnection> {
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let index: u64 = match get("index").map(str::parse) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return Ok(reply(StatusCode::BAD_REQUEST, "Invalid index")),
    };
    let wait = match get("wait") {
        None => Duration::from_secs(300),
        Some(w) => match parse_go_duration(w) {
            Some(w) => w.min(Duration::from_secs(600)),
            None => return Ok(reply(StatusCode::BAD_REQUEST, "Invalid wait time")),
        },
    };
    if index > 0 && *shared.fault_tx.borrow() != Fault::SpuriousWakeups {
        let jitter = wait.mul_f64(fastrand::f64() / 16.0);
        let deadline = Instant::now() + wait + jitter;
        let mut idx = shared.connect_tx.subscribe();
        let mut fault = shared.fault_tx.subscribe();
        loop {
            idx.borrow_and_update();
            let (now_index, renew_at, global) = {
                let mut c = shared.connect_lock();
                let (i, r) = current(&mut c, &table);
                (i, r, c.index)
            };
            // `current` may have renewed a due leaf: wake the other readers.
            shared.connect_tx.send_if_modified(|v| {
                let changed = *v != global;
                *v = global;
                changed
            });
            if now_index > index {
                break;
            }
            let renew = renew_at.unwrap_or(deadline).min(deadline);
            tokio::select! {
                _ = idx.changed() => {}
                () = tokio::time::sleep_until(renew) => {
                    if renew >= deadline {
                        break;
                    }
                }
                _ = fault.changed() => {
                    if *fault.borrow_and_update() != Fault::None {
                        break;
                    }
                }
            }
        }
        if let Some(resp) = connection_fault(shared).await? {
            return Ok(resp);
        }
    }
    let (body, index) = {
        let mut c = shared.connect_lock();
        let (index, _) = current(&mut c, &table);
        let body = match &table {
            Table::Roots => c.roots_json(),
            Table::Leaf(service) => ConnectState::leaf_json(c.leaf(service)),
            Table::Intentions => {
                let by_destination = get("by") == Some("destination");
                let mut out = serde_json::Map::new();
                for (k, name) in query {
                    if k == "name" {
                        out.insert(name.clone(), Value::from(c.matching(by_destination, name)));
                    }
                }
                Value::Object(out)
            }
        };
        (body, index)
    };
    Ok(json_reply(&body, Some(index)))
}

fn json_reply(v: &Value, index: Option<u64>) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = reply(StatusCode::OK, body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(i) = index {
        h.insert("x-consul-index", http::HeaderValue::from(i));
    }
    resp
}

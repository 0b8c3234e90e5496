//! API keys: the simplest way for a service to say who it is.
//!
//! Where mTLS is not available (a caller outside the mesh, a third party), a
//! shared secret in a header does the job if it is handled with care: the
//! client reads it from the environment or a file, never a literal in code;
//! it never reaches `Debug` output or logs; the server keeps only its SHA-256
//! and compares in constant time; and several keys can be valid at once so a
//! key rotates without downtime.
//!
//! - Client: [`ApiKeyLayer`] attaches the key (`x-api-key` by default, or
//!   `Authorization: Bearer`).
//! - Server: [`ApiKeyAuthLayer`] checks it against an [`ApiKeySet`], answers
//!   `401` without detail when it is missing or unknown, and puts the caller's
//!   [`CallerIdentity`](crate::CallerIdentity) into the request extensions,
//!   where [`AuthorizeLayer`](crate::authz::AuthorizeLayer) finds it.

mod client;
mod header;
mod keyset;
mod server;

#[cfg(feature = "reqwest")]
pub use client::reqwest_builder;
pub use client::{AddApiKey, ApiKeyLayer};
pub use header::ApiKeyHeader;
pub use keyset::{ApiKeyAuthConfig, ApiKeyEntry, ApiKeySet, MIN_KEY_LEN};
pub use server::{ApiKeyAuth, ApiKeyAuthLayer};

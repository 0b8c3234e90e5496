//! End-to-end, chaos and load scenarios for mesh, over real HTTP on 127.0.0.1.
//!
//! The scenarios live in `tests/`; servers come from `mesh-testkit`. This
//! library holds what several scenarios share.

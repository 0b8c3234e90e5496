//! Which transport errors are worth another attempt.

use std::any::Any;
use std::error::Error;
use std::io;

use crate::BoxError;

/// Views a classifier's error type as a `dyn Error`, when it is one of the
/// error types a tower client stack produces: [`BoxError`] (and the other boxed
/// `dyn Error`s), `std::io::Error`, `hyper::Error` with the `hyper` feature,
/// and `reqwest::Error` with the `reqwest` feature.
///
/// Classifiers are generic over the error type; this is how they look inside
/// one without requiring a bound that `BoxError` cannot meet (`Box<dyn Error>`
/// does not implement `Error`). Returns `None` for other types: map such errors
/// into a `BoxError` (tower's `MapErr`) or classify them with a closure.
pub fn as_dyn_error<E: 'static>(error: &E) -> Option<&(dyn Error + 'static)> {
    let any = error as &dyn Any;
    if let Some(b) = any.downcast_ref::<BoxError>() {
        return Some(&**b);
    }
    if let Some(b) = any.downcast_ref::<Box<dyn Error + Send + 'static>>() {
        return Some(&**b);
    }
    if let Some(b) = any.downcast_ref::<Box<dyn Error + 'static>>() {
        return Some(&**b);
    }
    #[cfg(feature = "hyper")]
    if let Some(e) = any.downcast_ref::<hyper::Error>() {
        return Some(e);
    }
    if let Some(e) = any.downcast_ref::<io::Error>() {
        return Some(e);
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = any.downcast_ref::<reqwest::Error>() {
        return Some(e);
    }
    None
}

/// The default answer to "is this transport error worth another attempt?".
///
/// True when anything in the error's source chain is a connection that could
/// not be made or broke (`io::Error` of kind refused, reset, aborted, not
/// connected, broken pipe, timed out, unexpected EOF), a hyper connection that
/// closed before the response (`is_incomplete_message`, `is_canceled`; feature
/// `hyper`), or a timeout (tower's `timeout::error::Elapsed` or tokio's `time::error::Elapsed`).
/// Anything else, including mesh's own "breaker open" and "no endpoint" errors,
/// is not retryable: another attempt would meet the same condition.
pub fn is_transient_error(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        #[cfg(feature = "hyper")]
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_timeout())
        {
            return true;
        }
        if is_elapsed(e) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether `error` proves that the request **never reached a server**, so
/// that sending it to another endpoint at once is safe for any method,
/// `POST` and gRPC calls included (retry's *requeue*, after Finagle's).
///
/// True when anything in the error's source chain is:
///
/// - a connection that could not be made: hyper-util's client error of kind
///   `Connect` (`hyper_util::client::legacy::Error::is_connect`, feature
///   `hyper`: refused, timed out, TLS handshake failed, whatever the connector),
///   `reqwest::Error::is_connect` (feature `reqwest`), or an `io::Error` of
///   kind `ConnectionRefused` (which only a connect can return);
/// - a request hyper handed back unsent (`hyper::Error::is_canceled`, feature
///   `hyper`: the connection closed before the request was written to it);
/// - an HTTP/2 stream the server refused unprocessed (feature `h2`): a `GOAWAY` from the
///   server whose last stream id is below the stream's (or that came before
///   the stream was opened), or a `RST_STREAM` with `REFUSED_STREAM` from the
///   server (RFC 9113 §8.7: neither was processed).
///
/// Deliberately *not* included, because the server may have seen the
/// request: a connection reset or closed after the request was written
/// (`ConnectionReset`, `BrokenPipe`, hyper's incomplete message), a timeout
/// of an attempt that was sent, any response. Mesh's own refusals (no ready
/// endpoint, an open breaker) live in crates this one does not know:
/// mesh-stack's predicate adds them.
///
/// Without the `hyper` and `h2` features only the `io::Error` (and, with
/// `reqwest`, the reqwest) cases are recognised; mesh-stack turns both on.
pub fn is_unsent_error(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        #[cfg(feature = "hyper")]
        if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && client.is_connect()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        #[cfg(feature = "hyper")]
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_canceled()
        {
            return true;
        }
        #[cfg(feature = "h2")]
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.is_remote()
            && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return true;
        }
        #[cfg(feature = "reqwest")]
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && r.is_connect()
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// A per-attempt timeout fired: tower's `Timeout` layer or `tokio::time::timeout`.
fn is_elapsed(e: &(dyn Error + 'static)) -> bool {
    e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("request failed")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn finds_connection_errors_down_the_chain() {
        let refused: BoxError = Box::new(Wrapper(io::ErrorKind::ConnectionRefused.into()));
        assert!(is_transient_error(as_dyn_error(&refused).unwrap()));
        let denied: BoxError = Box::new(Wrapper(io::ErrorKind::PermissionDenied.into()));
        assert!(!is_transient_error(as_dyn_error(&denied).unwrap()));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(is_transient_error(as_dyn_error(&reset).unwrap()));
    }

    #[test]
    fn timeouts_are_transient() {
        let e: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert!(is_transient_error(&*e));
        let e: BoxError = "elapsed".into();
        assert!(!is_transient_error(&*e));
    }

    #[test]
    fn only_errors_before_the_request_left_are_unsent() {
        let refused: BoxError = Box::new(Wrapper(io::ErrorKind::ConnectionRefused.into()));
        assert!(is_unsent_error(&*refused));
        // The server may have read the request before these.
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
        ] {
            let e: BoxError = Box::new(Wrapper(kind.into()));
            assert!(!is_unsent_error(&*e), "{kind:?}");
        }
        let e: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert!(!is_unsent_error(&*e));
    }

    #[cfg(feature = "h2")]
    #[test]
    fn only_refusals_from_the_server_are_unsent() {
        // A GOAWAY or REFUSED_STREAM from the server means "not processed"
        // (the end-to-end tests meet real ones); the same reason raised on
        // our side proves nothing.
        let ours: BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert!(
            !is_unsent_error(&*ours),
            "a reason without a frame from the server is ours"
        );
    }

    #[test]
    fn unknown_error_types_are_not_viewable() {
        assert!(as_dyn_error(&42u8).is_none());
        let e: Box<dyn Error + Send> = Box::new(Wrapper(io::ErrorKind::TimedOut.into()));
        assert!(as_dyn_error(&e).is_some());
    }
}

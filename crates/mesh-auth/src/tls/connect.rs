//! Plugging the client config into hyper-util, reqwest and tonic.

use super::client::MtlsClientConfig;

#[cfg(feature = "hyper")]
impl MtlsClientConfig {
    /// An HTTPS-only connector for hyper-util's client (HTTP/1.1 and HTTP/2
    /// by ALPN) presenting the client certificate and checking the server.
    ///
    /// tonic clients take it too, through
    /// `Endpoint::connect_with_connector`.
    pub fn https_connector(
        &self,
    ) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.rustls_config().as_ref().clone())
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http)
    }
}

#[cfg(feature = "reqwest")]
impl MtlsClientConfig {
    /// A `reqwest::ClientBuilder` using this TLS config; set timeouts and the
    /// rest on it, then `build()`.
    ///
    /// Redirects are not followed: a client that presents credentials (a
    /// certificate, and often an API key on top) should not carry them to
    /// wherever a `Location` header points. The 3xx response comes back to
    /// the caller; opt in with `.redirect(...)` on the builder if a service
    /// really needs it.
    pub fn reqwest_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(self.rustls_config().as_ref().clone())
    }
}

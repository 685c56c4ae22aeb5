//! How the front reaches regions and the Python app: plain HTTP, or TLS verified against
//! the CAs in the spec's `router.region_ca_file` or, without one, the system's trust store
//! (`SSL_CERT_FILE` honoured), as the Python app's `region_tls` does. A request over plain
//! HTTP takes the plain client, which carries no TLS layer.

use std::fs::File;
use std::io::BufReader;
use std::time::Duration;

use hyper::client::{HttpConnector, ResponseFuture};
use hyper::{Body, Client, Request};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use rustls::{ClientConfig, RootCertStore};

pub struct Clients {
    plain: Client<HttpConnector, Body>,
    /// For `https://` regions; None when no region is reached over TLS.
    tls: Option<Client<HttpsConnector<HttpConnector>, Body>>,
}

impl Clients {
    /// With a TLS client if `tls`, some region being reached over `https://`.
    pub fn new(tls: bool, ca_file: Option<&str>) -> Result<Clients, String> {
        let mut plain = HttpConnector::new();
        plain.set_nodelay(true);
        plain.set_connect_timeout(Some(Duration::from_secs(5)));
        let tls = if tls {
            let config = ClientConfig::builder()
                .with_safe_defaults()
                .with_root_certificates(trusted(ca_file)?)
                .with_no_client_auth();
            let mut connector = plain.clone();
            connector.enforce_http(false);
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .enable_http1()
                .wrap_connector(connector);
            Some(Client::builder().build(connector))
        } else {
            None
        };
        Ok(Clients {
            plain: Client::builder().build(plain),
            tls,
        })
    }

    pub fn request(&self, request: Request<Body>) -> ResponseFuture {
        match (&self.tls, request.uri().scheme_str()) {
            (Some(tls), Some("https")) => tls.request(request),
            _ => self.plain.request(request),
        }
    }
}

fn trusted(ca_file: Option<&str>) -> Result<RootCertStore, String> {
    let (certificates, from) = match ca_file {
        Some(path) => {
            let file = File::open(path).map_err(|e| format!("region CA file {path}: {e}"))?;
            let read = rustls_pemfile::certs(&mut BufReader::new(file));
            (
                read.map_err(|e| format!("region CA file {path}: {e}"))?,
                path,
            )
        }
        None => {
            let found = rustls_native_certs::load_native_certs()
                .map_err(|e| format!("the system's CA certificates: {e}"))?;
            let found = found.into_iter().map(|c| c.0).collect();
            (found, "the system's trust store")
        }
    };
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(&certificates);
    if added == 0 {
        return Err(format!("no CA certificate in {from}"));
    }
    Ok(roots)
}

//! How the front reaches regions: plain HTTP, or TLS verified against the CAs in the
//! spec's `router.region_ca_file` or, without one, the system's trust store
//! (`SSL_CERT_FILE` honoured), as the Python app's `region_tls` does.

use std::fs::File;
use std::io::BufReader;
use std::time::Duration;

use hyper::client::HttpConnector;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use rustls::{ClientConfig, RootCertStore};

pub type Connector = HttpsConnector<HttpConnector>;

/// A connector for `http://` and `https://` endpoints; the CAs are read only when some
/// region is reached over TLS (`tls`).
pub fn connector(tls: bool, ca_file: Option<&str>) -> Result<Connector, String> {
    let mut plain = HttpConnector::new();
    plain.enforce_http(false);
    plain.set_nodelay(true);
    plain.set_connect_timeout(Some(Duration::from_secs(5)));
    let roots = if tls {
        trusted(ca_file)?
    } else {
        RootCertStore::empty()
    };
    let config = ClientConfig::builder()
        .with_safe_defaults()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(plain))
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

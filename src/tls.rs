//! TLS to Postgres and Redis (rustls), described wholly by the URL, so that one setting says how
//! to reach a server and the URL a process is given is all it needs:
//!
//! - Postgres, libpq's parameters: `sslmode` (`disable`, `prefer` by default, `require`,
//!   `verify-ca`, `verify-full`), `sslrootcert` (a PEM file of CAs; without it `verify-*` trusts
//!   the public CAs, Mozilla's list), `sslcert` and `sslkey` (a client certificate). As in libpq,
//!   `prefer` and `require` encrypt without checking the server, unless `sslrootcert` is given.
//! - Redis, redis-py's parameters of a `rediss://` URL: `ssl_ca_certs` (without it, the public
//!   CAs), `ssl_certfile` and `ssl_keyfile` (a client certificate). The name is always checked.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The URL parameters this module reads, which the drivers do not know.
const POSTGRES_PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A Postgres URL made ready to connect: the driver's configuration and its TLS connector.
pub struct Postgres {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// Reads a Postgres URL (or a `key=value` connection string, which keeps the driver's own
/// `sslmode`: `disable`, `prefer` or `require`), its TLS parameters included.
pub fn postgres(url: &str) -> anyhow::Result<Postgres> {
    // The driver's parameters stay as they were written (re-encoding would turn `%20` into `+`,
    // which the driver does not read as a space).
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (ours, rest): (Vec<&str>, Vec<&str>) = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .partition(|pair| POSTGRES_PARAMETERS.contains(&pair.split('=').next().unwrap_or_default()));
    let ours: HashMap<String, String> =
        url::form_urlencoded::parse(ours.join("&").as_bytes()).into_owned().collect();
    let param = |key: &str| ours.get(key).map(String::as_str);
    let driver_url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    let mut config = tokio_postgres::Config::from_str(&driver_url)?;

    let mode = param("sslmode").unwrap_or("prefer");
    let roots = param("sslrootcert").map(roots).transpose()?;
    let check = match (mode, roots) {
        ("disable", _) => {
            config.ssl_mode(SslMode::Disable);
            Check::Lenient(None)
        }
        // libpq: a root certificate makes `prefer` and `require` check the chain, as `verify-ca`.
        ("allow" | "prefer", roots) => {
            config.ssl_mode(SslMode::Prefer);
            Check::Lenient(roots)
        }
        ("require", roots) => {
            config.ssl_mode(SslMode::Require);
            Check::Lenient(roots)
        }
        ("verify-ca", roots) => {
            config.ssl_mode(SslMode::Require);
            Check::Lenient(Some(roots.unwrap_or_else(public_roots)))
        }
        ("verify-full", roots) => {
            config.ssl_mode(SslMode::Require);
            Check::ChainAndName(roots.unwrap_or_else(public_roots))
        }
        (other, _) => {
            bail!("sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")
        }
    };
    let client_cert = match (param("sslcert"), param("sslkey")) {
        (Some(cert), Some(key)) => Some((certificates(cert)?, private_key(key)?)),
        (None, None) => None,
        _ => bail!("sslcert and sslkey go together"),
    };
    Ok(Postgres { config, tls: MakeRustlsConnect::new(client_config(check, client_cert)?) })
}

/// A Redis client for a URL, its TLS parameters read: `redis::Client::open` for everything.
pub fn redis(url: &str) -> anyhow::Result<redis::Client> {
    Ok(match redis_certificates(url)? {
        None => redis::Client::open(url)?,
        Some(certificates) => redis::Client::build_with_tls(url, certificates)?,
    })
}

/// The certificates a Redis URL names (`None` when it names none).
pub fn redis_certificates(url: &str) -> anyhow::Result<Option<redis::TlsCertificates>> {
    let parsed = url::Url::parse(url).context("not a URL")?;
    let get = |key: &str| parsed.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned());
    let (ca, cert, key) = (get("ssl_ca_certs"), get("ssl_certfile"), get("ssl_keyfile"));
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    if !matches!(parsed.scheme(), "rediss" | "valkeys") {
        bail!("ssl_ca_certs, ssl_certfile and ssl_keyfile need a rediss:// URL");
    }
    let client_tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            Some(redis::ClientTlsConfig { client_cert: read(&cert)?, client_key: read(&key)? })
        }
        (None, None) => None,
        _ => bail!("ssl_certfile and ssl_keyfile go together"),
    };
    let root_cert = ca.map(|path| read(&path)).transpose()?;
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

/// What a client checks of a Postgres server's certificate.
enum Check {
    /// Signed by one of these roots, for the host connected to (`verify-full`).
    ChainAndName(RootCertStore),
    /// Signed by one of these roots (`verify-ca`), or nothing at all (`prefer`, `require`).
    Lenient(Option<RootCertStore>),
}

fn client_config(
    check: Check,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> anyhow::Result<ClientConfig> {
    let builder = ClientConfig::builder();
    let builder = match check {
        Check::ChainAndName(roots) => builder.with_root_certificates(roots),
        Check::Lenient(roots) => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Lenient::new(roots)))
        }
    };
    Ok(match client_cert {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).context("the client certificate")?,
        None => builder.with_no_client_auth(),
    })
}

fn read(path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {path}"))
}

fn certificates(path: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {path}"))?;
    if certs.is_empty() {
        bail!("{path} holds no PEM certificate");
    }
    Ok(certs)
}

fn private_key(path: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(Path::new(path))
        .with_context(|| format!("reading a private key from {path}"))
}

fn roots(path: &str) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store.add(cert).with_context(|| format!("a certificate of {path}"))?;
    }
    Ok(store)
}

fn public_roots() -> RootCertStore {
    RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// libpq short of `verify-full`: the chain to a root is checked when there are roots
/// (`verify-ca`), nothing otherwise; the handshake's signatures always are.
#[derive(Debug)]
struct Lenient {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Lenient {
    fn new(roots: Option<RootCertStore>) -> Self {
        Self { roots, algorithms: provider().signature_verification_algorithms }
    }
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algorithms.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        match postgres(url) {
            Ok(_) => panic!("{url} was taken"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_tls_parameters_leave_the_rest_of_a_postgres_url_to_the_driver() {
        let url = "postgres://u@127.0.0.1:1,127.0.0.1:2/db?target_session_attrs=read-write&sslmode=require";
        let Postgres { config, .. } = postgres(url).unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(config.get_hosts().len(), 2);
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(postgres("postgres://u@h/db").unwrap().config.get_ssl_mode(), SslMode::Prefer);
        let disabled = postgres("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(disabled.config.get_ssl_mode(), SslMode::Disable);
        // What the driver reads is passed on as written, escapes included.
        let options =
            postgres("postgres://u@h/db?options=-c%20statement_timeout%3D5s&sslmode=require").unwrap();
        assert_eq!(options.config.get_options(), Some("-c statement_timeout=5s"));
    }

    #[test]
    fn a_wrong_tls_parameter_is_a_clear_error() {
        assert!(error("postgres://u@h/db?sslmode=verify").contains("\"verify\" is not one of"));
        assert!(error("postgres://u@h/db?sslcert=/c.pem").contains("sslcert and sslkey go together"));
        let missing = error("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let plain = redis("redis://h:1/?ssl_ca_certs=/ca.pem").map(drop).unwrap_err().to_string();
        assert!(plain.contains("need a rediss:// URL"), "{plain}");
        let missing = redis("rediss://h:1/?ssl_ca_certs=/nonexistent/ca.pem").map(drop).unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/ca.pem"), "{missing:#}");
    }
}

//! `--tls`: herald also runs with TLS (`herald-wss`) beside plain herald,
//! with a CA and certificate generated for the run; clients dial wss and
//! the producer posts over https to the servers marked here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_rustls::TlsConnector;

struct Material {
    ca_pem: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    connector: TlsConnector,
}

static MATERIAL: OnceLock<Material> = OnceLock::new();
static TLS_SERVERS: Mutex<Option<HashSet<SocketAddr>>> = Mutex::new(None);

fn generate(dir: &std::path::Path) -> Result<Material> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
        .signed_by(&key, &ca)?;
    std::fs::create_dir_all(dir)?;
    let cert_file = dir.join("bench-cert.pem");
    let key_file = dir.join("bench-key.pem");
    std::fs::write(&cert_file, leaf.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Material {
        ca_pem: ca.pem(),
        cert_file,
        key_file,
        connector: TlsConnector::from(Arc::new(config)),
    })
}

fn material(dir: &std::path::Path) -> Result<&'static Material> {
    if let Some(m) = MATERIAL.get() {
        return Ok(m);
    }
    let m = generate(dir).context("generate the bench's TLS certificate")?;
    Ok(MATERIAL.get_or_init(|| m))
}

/// herald's settings for TLS with the run's certificate (files in `dir`).
pub(crate) fn herald_env(dir: &std::path::Path) -> Result<Vec<(&'static str, String)>> {
    let m = material(dir)?;
    Ok(vec![
        (
            "HERALD_SERVER__TLS__CERT_FILE",
            m.cert_file.display().to_string(),
        ),
        (
            "HERALD_SERVER__TLS__KEY_FILE",
            m.key_file.display().to_string(),
        ),
    ])
}

/// Remember that `addr` speaks TLS.
pub(crate) fn mark(addr: SocketAddr) {
    TLS_SERVERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(addr);
}

/// The connector for `addr` when it speaks TLS.
pub(crate) fn connector(addr: SocketAddr) -> Option<TlsConnector> {
    let tls = TLS_SERVERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(|s| s.contains(&addr));
    tls.then(|| MATERIAL.get().map(|m| m.connector.clone()))
        .flatten()
}

/// The CA of the run, for an https client.
pub(crate) fn ca_pem() -> Option<&'static str> {
    MATERIAL.get().map(|m| m.ca_pem.as_str())
}

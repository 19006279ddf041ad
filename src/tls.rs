//! TLS on herald's listeners (rustls): `[server.tls]` and `[admin.tls]`.
//!
//! A [`Certificates`] holds the live server configuration (the PEM chain
//! and key, TLS 1.2 and 1.3, ALPN `http/1.1`) behind an [`ArcSwap`]: every
//! handshake takes the one live at that moment, so a reload affects new
//! connections only and sessions already up keep theirs.
//!
//! Reload ([`Certificates::spawn_reload`]): on a change of either file
//! ([`crate::watch`]) both are read; when their content differs from the
//! pair last tried, the pair is checked (it parses, there is exactly one
//! private key, and the key matches the first certificate) and made live,
//! else logged and counted, and the previous pair stays, as with rules. A
//! certificate renewed in two steps (key first, then certificate) is
//! therefore rejected once, then accepted when the second file lands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::watch::Changes;

/// `[server.tls]` / `[admin.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server's certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Why a certificate pair cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct TlsError {
    pub file: String,
    pub problem: String,
}

/// The live certificate of one listener.
#[derive(Debug)]
pub struct Certificates {
    config: TlsConfig,
    live: ArcSwap<ServerConfig>,
    /// Content id of the pair last tried, valid or not.
    last_tried: std::sync::Mutex<u64>,
}

fn content_id(cert: &[u8], key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&[cert, b"\0", key].concat())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        file: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// A rustls server configuration from PEM bytes.
fn build(config: &TlsConfig, cert: &[u8], key: &[u8]) -> Result<ServerConfig, TlsError> {
    let cert_file = config.cert_file.display().to_string();
    let key_file = config.key_file.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError {
            file: cert_file.clone(),
            problem: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError {
            file: cert_file,
            problem: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError {
        file: key_file.clone(),
        problem: format!("no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            file: cert_file.clone(),
            problem: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError {
            file: format!("{cert_file} and {key_file}"),
            problem: format!("not a matching certificate and key: {e}"),
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}

impl Certificates {
    /// Load the pair named by `config` (at start: an error stops herald).
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let cert = read(&config.cert_file)?;
        let key = read(&config.key_file)?;
        let server = build(config, &cert, &key)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            live: ArcSwap::from_pointee(server),
            last_tried: std::sync::Mutex::new(content_id(&cert, &key)),
        }))
    }

    /// An acceptor with the certificate live now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.live.load_full())
    }

    /// Read the files again; make the pair live when it changed and is
    /// valid. `Ok(true)` when a new pair went live.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let cert = read(&self.config.cert_file)?;
        let key = read(&self.config.key_file)?;
        let id = content_id(&cert, &key);
        {
            let mut last = self
                .last_tried
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *last == id {
                return Ok(false);
            }
            *last = id;
        }
        let server = build(&self.config, &cert, &key)?;
        self.live.store(Arc::new(server));
        Ok(true)
    }

    /// Reload on every change of the files until `stop`.
    pub fn spawn_reload(
        self: &Arc<Self>,
        listener: &'static str,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let files = [
                this.config.cert_file.as_path(),
                this.config.key_file.as_path(),
            ];
            let mut changes = match Changes::watch(&files) {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::warn!(listener, error = %e, "cannot watch the TLS files; certificate reload disabled");
                    return;
                }
            };
            while changes.next(&stop).await.is_some() {
                match this.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.edge.tls_reloaded(true);
                        tracing::info!(listener, cert = %this.config.cert_file.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        metrics.edge.tls_reloaded(false);
                        tracing::error!(listener, error = %e, "TLS certificate rejected; the previous one stays");
                    }
                }
            }
        })
    }
}

/// Make aws-lc-rs rustls's process-wide crypto provider, once.
///
/// The listeners pass their provider explicitly, but libraries that build
/// their own rustls configuration (the redis crate for `rediss://`) ask for
/// the process default, and rustls panics when more than one provider is
/// compiled in and none was chosen. Installing again is a no-op.
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another one was installed first: that one serves.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (TlsConfig, rcgen::CertifiedKey<rcgen::KeyPair>) {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("generate");
        let cert_file = dir.join(format!("{name}-cert.pem"));
        let key_file = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, generated.cert.pem()).expect("write");
        std::fs::write(&key_file, generated.signing_key.serialize_pem()).expect("write");
        (
            TlsConfig {
                cert_file,
                key_file,
            },
            generated,
        )
    }

    #[test]
    fn a_bad_pair_is_refused_naming_the_files_and_a_reload_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("dir");
        let (good, _) = pair(dir.path(), "good");
        let (other, _) = pair(dir.path(), "other");
        let certificates = Certificates::load(&good).expect("a good pair loads");
        assert!(
            !certificates.reload().expect("unchanged"),
            "same content: no reload"
        );

        let mismatched = TlsConfig {
            cert_file: good.cert_file.clone(),
            key_file: other.key_file.clone(),
        };
        let err = Certificates::load(&mismatched).expect_err("the key is another's");
        assert!(
            err.file.contains("good-cert.pem") && err.file.contains("other-key.pem"),
            "{err}"
        );

        std::fs::write(dir.path().join("junk.pem"), "not PEM").expect("write");
        let junk = TlsConfig {
            cert_file: dir.path().join("junk.pem"),
            key_file: good.key_file.clone(),
        };
        let err = Certificates::load(&junk).expect_err("no certificate");
        assert!(err.file.ends_with("junk.pem"), "{err}");
        let missing = TlsConfig {
            cert_file: dir.path().join("missing.pem"),
            key_file: good.key_file.clone(),
        };
        assert!(Certificates::load(&missing).is_err());

        // A reload to a mismatched key fails and the live pair stays.
        let before = certificates.live.load_full();
        std::fs::copy(&other.key_file, &good.key_file).expect("copy");
        assert!(certificates.reload().is_err());
        assert!(Arc::ptr_eq(&before, &certificates.live.load_full()));
        assert_eq!(before.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // The same broken content again is not retried.
        assert!(!certificates.reload().expect("already tried"));
    }
}

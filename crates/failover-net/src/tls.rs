//! TLS material (CA, certificate, key) read from PEM files, reloaded when the files
//! change, and the client side of mutual TLS (docs/security.md).
//!
//! Controllers and clients read their files through [`Reloading`]: every new connection
//! asks for the current configuration, which is rebuilt when one of the files' size or
//! modification time changed. Rotating a certificate is writing the new files; open
//! connections keep the configuration they were made with, new ones use the new files.
//! A set of files that does not load (for example half written) keeps the previous
//! configuration in use and is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The rustls crypto provider every TLS configuration of this project uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file should hold (CA, certificate, key).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{} holds no {what} in PEM form", path.display())]
    Empty {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the material (key does not match, bad certificate...).
    #[error("TLS configuration from {files}: {reason}")]
    Invalid {
        /// The files involved.
        files: String,
        /// rustls's reason.
        reason: String,
    },
}

/// Where a party's TLS material lives: the CA that signs every certificate of the
/// cluster, and this party's own certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the cluster CA certificate(s).
    pub ca: PathBuf,
    /// PEM file with this party's certificate (chain).
    pub cert: PathBuf,
    /// PEM file with this party's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The three files, for error messages.
    pub fn describe(&self) -> String {
        format!(
            "ca {}, cert {}, key {}",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// Size and modification time of every file: a change means reload.
    fn stamp(&self) -> Stamp {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)))
            })
            .collect()
    }
}

/// Every certificate in a PEM file.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut bytes.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_owned(),
        source,
    })?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            what: "private key",
            path: path.to_owned(),
        })
}

/// The CA certificates of a PEM file as a trust store.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            files: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Size and modification time of each file of a [`TlsFiles`] (`None`: unreadable).
type Stamp = Vec<Option<(u64, SystemTime)>>;

/// A configuration built from [`TlsFiles`], rebuilt when the files change (module doc).
pub struct Reloading<T> {
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<T, TlsError>,
    cache: Mutex<(Stamp, Arc<T>)>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish()
    }
}

impl<T> Reloading<T> {
    /// Loads the files once (an error here is a start-up error) and keeps `build` for
    /// reloads.
    pub fn new(
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<T, TlsError>,
    ) -> Result<Self, TlsError> {
        let stamp = files.stamp();
        let config = Arc::new(build(&files)?);
        Ok(Reloading {
            files,
            build,
            cache: Mutex::new((stamp, config)),
        })
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for a new connection: rebuilt first if a file changed; the
    /// previous one if the changed files do not load.
    pub fn current(&self) -> Arc<T> {
        let stamp = self.files.stamp();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != stamp {
            match (self.build)(&self.files) {
                Ok(config) => {
                    tracing::info!(files = %self.files.describe(), "TLS files changed: reloaded");
                    *cache = (stamp, Arc::new(config));
                }
                Err(error) => {
                    tracing::warn!(%error, "TLS files changed but do not load; keeping the previous ones");
                    // Try again only when they change again.
                    cache.0 = stamp;
                }
            }
        }
        cache.1.clone()
    }
}

/// A client configuration for mutual TLS: trusts only the cluster CA and presents the
/// client's certificate. Speaks HTTP/2 (gRPC).
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let roots = load_roots(&files.ca)?;
    let certs = load_certs(&files.cert, "certificate")?;
    let key = load_key(&files.key)?;
    let invalid = |e: rustls::Error| TlsError::Invalid {
        files: files.describe(),
        reason: e.to_string(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(invalid)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client configuration without a client certificate (a bearer-token client): still
/// trusts only the cluster CA (`files.ca`; `cert` and `key` are not read).
pub fn client_config_without_certificate(
    files: &TlsFiles,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = load_roots(&files.ca)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            files: files.describe(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side of mutual TLS, reloaded when its files change.
pub type ClientTls = Reloading<rustls::ClientConfig>;

/// Loads a client's TLS configuration without a client certificate: it verifies the
/// controllers against the CA file `ca`, and authenticates with a bearer token.
pub fn client_tls_without_certificate(ca: PathBuf) -> Result<Arc<ClientTls>, TlsError> {
    let files = TlsFiles {
        ca,
        cert: PathBuf::new(),
        key: PathBuf::new(),
    };
    Ok(Arc::new(Reloading::new(
        files,
        client_config_without_certificate,
    )?))
}

/// Loads a client's mutual-TLS configuration.
pub fn client_tls(files: TlsFiles) -> Result<Arc<ClientTls>, TlsError> {
    Ok(Arc::new(Reloading::new(files, client_config)?))
}

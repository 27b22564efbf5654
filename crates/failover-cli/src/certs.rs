//! A throwaway certificate authority for local clusters (`failover dev`) and tests: a CA,
//! a certificate per controller, and client certificates for the roles of
//! docs/security.md, all written as PEM files into one directory.
//!
//! Not for production: the CA key lies next to the certificates. Production clusters
//! issue certificates with their own CA (docs/security.md, "Issuing certificates").

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use failover_core::Topology;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused a parameter.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A certificate and its key on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
}

/// The distinguished name of the throwaway CA (fixed, so leaf certificates can be issued
/// again later from the saved key).
const CA_NAME: &str = "failover throwaway CA";

/// The throwaway CA of a directory: `ca.pem` and `ca.key`.
pub struct Authority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    Ok(params)
}

fn write(path: &Path, text: &str) -> Result<(), CertError> {
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| CertError::Io {
            path: path.to_owned(),
            source,
        })
}

impl Authority {
    /// Opens the CA in `dir`, creating it (and the directory) if there is none.
    pub fn open_or_create(dir: &Path) -> Result<Authority, CertError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join("ca.key");
        let key = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            KeyPair::from_pem(&pem)?
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write(&dir.join("ca.pem"), &cert.pem())?;
            write(&key_path, &key.serialize_pem())?;
            key
        };
        Ok(Authority {
            dir: dir.to_owned(),
            issuer: Issuer::new(ca_params()?, key),
        })
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `<name>.pem` and `<name>.key` (replacing them if they exist), with a new key,
    /// for the given URI SANs and, for servers, the hosts (IP addresses or DNS names).
    pub fn issue(&self, name: &str, uris: &[String], hosts: &[String]) -> Result<Pair, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        for host in hosts {
            params.subject_alt_names.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into()?),
            });
        }
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let pair = Pair {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        // The key first: a reloader that sees the new certificate also finds its key.
        write(&pair.key, &key.serialize_pem())?;
        write(&pair.cert, &cert.pem())?;
        Ok(pair)
    }

    /// A controller's certificate: role peer, its gRPC and HTTP hosts.
    pub fn issue_controller(&self, topology: &Topology, id: u64) -> Result<Pair, CertError> {
        let mut hosts = vec!["localhost".to_owned()];
        if let Some((_, c)) = topology.controller(id) {
            for addr in std::iter::once(&c.addr).chain(c.http_addr.as_ref()) {
                if let Some((host, _)) = addr.rsplit_once(':') {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    if !hosts.iter().any(|h| h == host) {
                        hosts.push(host.to_owned());
                    }
                }
            }
        }
        self.issue(
            &format!("controller-{id}"),
            &[format!("failover://role/peer/controller-{id}")],
            &hosts,
        )
    }

    /// A client certificate of `role` (`operator`, `reader`) named `name`.
    pub fn issue_client(&self, role: &str, name: &str) -> Result<Pair, CertError> {
        self.issue(
            &format!("{role}-{name}"),
            &[format!("failover://role/{role}/{name}")],
            &[],
        )
    }

    /// An engine certificate bound to `site` (executors and lease clients of that site).
    pub fn issue_engine(&self, site: &str) -> Result<Pair, CertError> {
        self.issue(
            &format!("engine-{site}"),
            &[
                format!("failover://role/engine/{site}"),
                format!("failover://site/{site}"),
            ],
            &[],
        )
    }
}

/// Everything a local cluster needs, issued into `dir`: the CA, every controller's
/// certificate, an operator (`operator-dev`), a reader (`reader-dev`), and an engine
/// certificate per site. Returns the topology with `tls` and every controller's
/// certificate filled in (absolute paths).
pub fn issue_for(topology: &Topology, dir: &Path) -> Result<Topology, CertError> {
    let ca = Authority::open_or_create(dir)?;
    let mut secured = topology.clone();
    for site in &mut secured.sites {
        for c in &mut site.controllers {
            let pair = ca.issue_controller(topology, c.id)?;
            c.cert = Some(pair.cert.display().to_string());
            c.key = Some(pair.key.display().to_string());
        }
        ca.issue_engine(site.name.as_str())?;
    }
    ca.issue_client("operator", "dev")?;
    ca.issue_client("reader", "dev")?;
    secured.tls = Some(failover_core::config::TlsConfig {
        ca: Some(ca.ca().display().to_string()),
        http: false,
        insecure: false,
    });
    Ok(secured)
}

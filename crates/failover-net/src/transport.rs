//! How clients reach controllers: a [`Dialer`] makes gRPC channels.
//!
//! Every component that talks to a controller (the CLI, the controllers' own Raft and
//! forwarding clients, lease clients) dials through this trait, so a simulated network
//! can replace TCP in tests without touching their logic.

use std::time::Duration;

use failover_proto::pin::{ClusterPin, PinnedChannel};
use failover_proto::wire::Chan;
use tonic::transport::Channel;

/// Why a connection to a peer could not even be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot dial {addr}: {reason}")]
pub struct DialError {
    /// The address dialed.
    pub addr: String,
    /// Why it failed.
    pub reason: String,
}

/// Makes gRPC channels to `host:port` addresses. Channels connect lazily and reconnect
/// by themselves; the dialer only decides how bytes travel. Every channel it makes
/// carries its [`ClusterPin`] (the cluster id and token of every call).
pub trait Dialer: Send + Sync + 'static {
    /// A channel to `addr`.
    fn channel(&self, addr: &str) -> Result<Chan, DialError>;

    /// The cluster id and credentials every channel of this dialer carries.
    fn pin(&self) -> &ClusterPin;
}

/// Dials over TCP with a connect timeout and `TCP_NODELAY`.
#[derive(Debug, Clone)]
pub struct TcpDialer {
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// What every call carries (cluster id, token).
    pub pin: ClusterPin,
}

impl Default for TcpDialer {
    fn default() -> Self {
        TcpDialer {
            connect_timeout: Duration::from_millis(500),
            pin: ClusterPin::learning(),
        }
    }
}

impl TcpDialer {
    /// A dialer whose calls carry `pin`.
    pub fn with_pin(pin: ClusterPin) -> Self {
        TcpDialer {
            pin,
            ..TcpDialer::default()
        }
    }
}

impl Dialer for TcpDialer {
    fn pin(&self) -> &ClusterPin {
        &self.pin
    }

    fn channel(&self, addr: &str) -> Result<Chan, DialError> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
                DialError {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                }
            })?;
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(PinnedChannel::new(channel, self.pin.clone(), addr))
    }
}

/// How long a TLS handshake may take once TCP is connected (a handshake costs a few
/// signatures: more than a TCP connect, and more on a loaded machine).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Dials over TCP and mutual TLS (docs/security.md): the controller's certificate must be
/// signed by the cluster CA and name the address dialed (IP or DNS name); the client
/// presents its own certificate. Every new connection reads the current files
/// ([`crate::tls::Reloading`]), so rotated certificates are used without a restart.
#[derive(Debug, Clone)]
pub struct TlsDialer {
    /// How long the TCP connection may take (the TLS handshake then gets 2 s).
    pub connect_timeout: Duration,
    /// The client's TLS material.
    pub tls: std::sync::Arc<crate::tls::ClientTls>,
    /// One channel per address, shared by every caller: a handshake costs more than a
    /// TCP connect, and openraft makes a new client after every failed call, so a fresh
    /// channel each time could keep a slow peer from ever finishing one.
    channels: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Channel>>>,
    /// What every call carries (cluster id, token).
    pub pin: ClusterPin,
}

impl TlsDialer {
    /// A dialer presenting the given material, with the default connect timeout.
    pub fn new(tls: std::sync::Arc<crate::tls::ClientTls>) -> Self {
        TlsDialer {
            connect_timeout: TcpDialer::default().connect_timeout,
            tls,
            channels: Default::default(),
            pin: ClusterPin::learning(),
        }
    }

    /// This dialer with its calls carrying `pin`.
    pub fn with_pin(mut self, pin: ClusterPin) -> Self {
        self.pin = pin;
        self
    }
}

impl Dialer for TlsDialer {
    fn pin(&self) -> &ClusterPin {
        &self.pin
    }

    fn channel(&self, addr: &str) -> Result<Chan, DialError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.new_channel(addr)?;
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(PinnedChannel::new(channel, self.pin.clone(), addr))
    }
}

impl TlsDialer {
    fn new_channel(&self, addr: &str) -> Result<Channel, DialError> {
        let dial_error = |reason: String| DialError {
            addr: addr.to_owned(),
            reason,
        };
        // The channel speaks HTTP/2 over the stream the connector returns, which is
        // already encrypted: the URI scheme stays http.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| dial_error(e.to_string()))?;
        let (host, _) = addr
            .rsplit_once(':')
            .ok_or_else(|| dial_error("no port".to_owned()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| dial_error(format!("`{host}` is not a valid TLS server name: {e}")))?;
        let tls = self.tls.clone();
        let timeout = self.connect_timeout;
        let target = addr.to_owned();
        let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let tls = tls.current();
            let server_name = server_name.clone();
            let target = target.clone();
            async move {
                let timed_out = |what: &str, limit: Duration| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {limit:?} ({what} {target})"),
                    )
                };
                let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target))
                    .await
                    .map_err(|_| timed_out("connecting to", timeout))??;
                tcp.set_nodelay(true)?;
                let handshake = tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp);
                let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                    .await
                    .map_err(|_| timed_out("TLS handshake with", HANDSHAKE_TIMEOUT))??;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

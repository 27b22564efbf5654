//! How clients reach controllers: a [`Dialer`] makes gRPC channels.
//!
//! Every component that talks to a controller (the CLI, the controllers' own Raft and
//! forwarding clients, lease clients) dials through this trait, so a simulated network
//! can replace TCP in tests without touching their logic.

use std::time::Duration;

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
/// by themselves; the dialer only decides how bytes travel.
pub trait Dialer: Send + Sync + 'static {
    /// A channel to `addr`.
    fn channel(&self, addr: &str) -> Result<Channel, DialError>;
}

/// Dials over TCP with a connect timeout and `TCP_NODELAY`.
#[derive(Debug, Clone)]
pub struct TcpDialer {
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

impl Default for TcpDialer {
    fn default() -> Self {
        TcpDialer {
            connect_timeout: Duration::from_millis(500),
        }
    }
}

impl Dialer for TcpDialer {
    fn channel(&self, addr: &str) -> Result<Channel, DialError> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
                DialError {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                }
            })?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy())
    }
}

//! Who is calling, and what they may do (docs/security.md).
//!
//! A controller serves gRPC over mutual TLS: [`accept`] runs the handshake of every
//! incoming connection (clients must present a certificate signed by the cluster CA)
//! and records the caller's [`Identity`], read from the certificate's URI SANs:
//!
//! - `failover://role/<role>/<name>`: the role (`peer`, `engine`, `operator`, `reader`)
//!   and a name for logs and history;
//! - `failover://site/<site>` (engines, one per site): the sites an engine may hold
//!   leases and report for.
//!
//! When the topology lists bearer tokens (`tokens:`), the handshake also accepts a client
//! without a certificate; [`AuthLayer`] then takes the identity of each of its calls from
//! `authorization: Bearer <token>` (a certificate wins over a token).
//!
//! [`AuthLayer`] then checks every call against [`ROLE_TABLE`], the one place that says
//! which RPC needs which role; a call outside its role is answered `PERMISSION_DENIED`
//! before any service code runs. In `insecure` mode there is no TLS and no check.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use failover_net::tls::{self as client_tls, Reloading, TlsError, TlsFiles};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Another controller: Raft, and admin calls it forwards for a client.
    Peer,
    /// An engine host (executor, lease client): the lease and executor APIs, for its
    /// bound sites only.
    Engine,
    /// An operator: promote, demote, pause, resume, reload, and all a reader can.
    Operator,
    /// A reader: status, history, leases.
    Reader,
}

impl Role {
    /// The role's name in certificates and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Engine => "engine",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "peer" => Role::Peer,
            "engine" => Role::Engine,
            "operator" => Role::Operator,
            "reader" => Role::Reader,
            _ => return None,
        })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// What it may do.
    pub role: Role,
    /// Its name (from the certificate), recorded in history.
    pub name: String,
    /// For engines: the sites it is bound to.
    pub sites: Vec<String>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.role.as_str(), self.name)
    }
}

/// URI SAN prefix naming a role and a name.
pub const ROLE_URI: &str = "failover://role/";
/// URI SAN prefix naming a site an engine is bound to.
pub const SITE_URI: &str = "failover://site/";

impl Identity {
    /// The identity a certificate (DER) carries in its URI SANs, or why it has none.
    pub fn from_certificate(der: &[u8]) -> Result<Identity, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("unreadable client certificate: {e}"))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push(uri.to_string());
                }
            }
        }
        Identity::from_uris(&uris)
    }

    /// The identity named by a certificate's URI SANs (module doc).
    pub fn from_uris(uris: &[String]) -> Result<Identity, String> {
        let mut found = None;
        let mut sites = Vec::new();
        for uri in uris {
            if let Some(rest) = uri.strip_prefix(ROLE_URI) {
                let (role, name) = rest.split_once('/').unwrap_or((rest, ""));
                let role = Role::parse(role).ok_or_else(|| {
                    format!("certificate names unknown role `{role}` in {uri} (peer, engine, operator or reader)")
                })?;
                if found.is_some() {
                    return Err("certificate names more than one role".to_owned());
                }
                found = Some((role, name.to_owned()));
            } else if let Some(site) = uri.strip_prefix(SITE_URI) {
                sites.push(site.to_owned());
            }
        }
        let (role, name) = found.ok_or_else(|| {
            format!("certificate names no role (a URI SAN {ROLE_URI}<role>/<name>)")
        })?;
        Ok(Identity { role, name, sites })
    }

    /// The identity as a header value (`role/name[/site,site]`), for forwarding.
    fn to_header(&self) -> String {
        format!(
            "{}/{}/{}",
            self.role.as_str(),
            self.name,
            self.sites.join(",")
        )
    }

    fn from_header(text: &str) -> Option<Identity> {
        let mut parts = text.splitn(3, '/');
        let role = Role::parse(parts.next()?)?;
        let name = parts.next()?.to_owned();
        let sites = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Identity { role, name, sites })
    }
}

/// Which roles may call an RPC (by gRPC path prefix or full path). The first matching
/// row decides; a path no row matches is refused.
pub const ROLE_TABLE: &[(&str, &[Role])] = &[
    ("/failover.raft.v1.RaftService/", &[Role::Peer]),
    (
        "/failover.admin.v1.AdminService/Status",
        &[Role::Reader, Role::Operator, Role::Peer, Role::Engine],
    ),
    (
        "/failover.admin.v1.AdminService/History",
        &[Role::Reader, Role::Operator, Role::Peer],
    ),
    (
        "/failover.admin.v1.AdminService/Leases",
        &[Role::Reader, Role::Operator, Role::Peer],
    ),
    ("/failover.admin.v1.AdminService/AllowRejoin", &[Role::Peer]),
    ("/failover.admin.v1.AdminService/", &[Role::Operator]),
    ("/failover.lease.v1.LeaseService/", &[Role::Engine]),
    ("/failover.executor.v1.ExecutorService/", &[Role::Engine]),
];

/// Whether `role` may call the RPC at `path`.
pub fn allowed(path: &str, role: Role) -> bool {
    ROLE_TABLE
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .is_some_and(|(_, roles)| roles.contains(&role))
}

/// What a connection's TLS handshake established, attached to every request on it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The caller's certificate identity; `None` on a plaintext (insecure) connection, or
    /// on a TLS connection without a client certificate (a bearer-token client).
    pub identity: Option<Identity>,
    /// Whether the connection is TLS (`false`: insecure mode, no checks).
    pub secure: bool,
    /// The peer's address, when the connection is TCP (what limits count by in insecure
    /// mode).
    pub remote: Option<std::net::SocketAddr>,
}

/// The remote address of a connection whose info is tonic's TCP info.
fn remote_of<IO: Connected>(io: &IO) -> Option<std::net::SocketAddr> {
    let info = io.connect_info();
    (&info as &dyn std::any::Any)
        .downcast_ref::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|tcp| tcp.remote_addr())
}

/// A served connection: plaintext (insecure mode) or mutual TLS.
pub enum ServerConn<IO> {
    /// `insecure: true`.
    Plain(IO),
    /// TLS, with the caller's certificate identity (`None`: no client certificate, which
    /// the handshake allows only when the topology lists bearer tokens).
    Tls(Box<tokio_rustls::server::TlsStream<IO>>, Option<Identity>),
}

impl<IO> Connected for ServerConn<IO>
where
    IO: Connected,
{
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            ServerConn::Plain(io) => PeerInfo {
                identity: None,
                secure: false,
                remote: remote_of(io),
            },
            ServerConn::Tls(io, identity) => PeerInfo {
                identity: identity.clone(),
                secure: true,
                remote: remote_of(io.get_ref().0),
            },
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ServerConn::Tls(io, _) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            ServerConn::Tls(io, _) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_flush(cx),
            ServerConn::Tls(io, _) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ServerConn::Tls(io, _) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A controller's server side of mutual TLS, reloaded when its files change.
pub type ServerTls = Reloading<rustls::ServerConfig>;

/// A server configuration that requires a client certificate signed by the cluster CA.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    build_server_config(files, false)
}

/// A server configuration that checks a client certificate when one is presented (it
/// must be signed by the cluster CA) and accepts a client without one, which then needs
/// a bearer token ([`AuthLayer`]): for a topology with `tokens:`.
pub fn server_config_allowing_tokens(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    build_server_config(files, true)
}

fn build_server_config(
    files: &TlsFiles,
    allow_without_certificate: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let roots = Arc::new(client_tls::load_roots(&files.ca)?);
    let certs = client_tls::load_certs(&files.cert, "certificate")?;
    let key = client_tls::load_key(&files.key)?;
    let invalid = |reason: String| TlsError::Invalid {
        files: files.describe(),
        reason,
    };
    let mut verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, client_tls::provider());
    if allow_without_certificate {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| invalid(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(client_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The HTTP endpoints' configuration: the controller's certificate, no client
/// certificate asked (load balancers and Prometheus probe them).
pub fn http_server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let certs = client_tls::load_certs(&files.cert, "certificate")?;
    let key = client_tls::load_key(&files.key)?;
    let invalid = |reason: String| TlsError::Invalid {
        files: files.describe(),
        reason,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(client_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Loads the HTTP endpoints' TLS configuration.
pub fn http_tls(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
    Ok(Arc::new(Reloading::new(files, http_server_config)?))
}

/// Loads a controller's server TLS configuration.
pub fn server_tls(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
    Ok(Arc::new(Reloading::new(files, server_config)?))
}

/// Loads a controller's server TLS configuration for a topology with bearer tokens
/// ([`server_config_allowing_tokens`]).
pub fn server_tls_allowing_tokens(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
    Ok(Arc::new(Reloading::new(
        files,
        server_config_allowing_tokens,
    )?))
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections accepted but not yet handed to the server.
const ACCEPT_BACKLOG: usize = 64;

/// The connections of `incoming`, with the TLS handshake done (each in its own task, so a
/// slow client delays nobody) when `tls` is given, as they are when it is not. A
/// handshake that fails (no certificate, wrong CA, no role) is logged and dropped.
pub fn accept<S, IO, IE>(
    incoming: S,
    tls: Option<Arc<ServerTls>>,
) -> impl Stream<Item = Result<ServerConn<IO>, io::Error>> + Send + 'static
where
    S: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        while let Some(next) = incoming.next().await {
            let io = match next {
                Ok(io) => io,
                Err(e) => {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let Some(tls) = &tls else {
                if tx.send(Ok(ServerConn::Plain(io))).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!("TLS handshake timed out");
                            return;
                        }
                    };
                // No certificate: the verifier let it through only because the topology
                // lists bearer tokens; the call must then carry one (AuthLayer).
                let identity = match stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                {
                    Some(cert) => Identity::from_certificate(cert).map(Some),
                    None => Ok(None),
                };
                match identity {
                    Ok(identity) => {
                        let _ = tx
                            .send(Ok(ServerConn::Tls(Box::new(stream), identity)))
                            .await;
                    }
                    Err(why) => tracing::warn!(%why, "connection refused"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Header by which a controller forwarding an admin call names the client it forwards
/// for; honoured only on a peer's connection.
pub const ON_BEHALF_OF: &str = "x-failover-on-behalf-of";

tokio::task_local! {
    static CALLER: Option<Identity>;
    static REMOTE: Option<std::net::SocketAddr>;
}

/// Who per-identity limits count the call being served against (docs/security.md,
/// "Limits and slow clients"): the authenticated identity (`role/name`), or in insecure
/// mode the peer's IP address (`address/<ip>`; every client on one host shares it).
pub fn limit_key() -> String {
    if let Some(identity) = caller() {
        return identity.to_string();
    }
    match REMOTE.try_with(|r| *r).ok().flatten() {
        Some(addr) => format!("address/{}", addr.ip()),
        None => "address/unknown".to_owned(),
    }
}

/// The authenticated caller of the call being served (`None` in insecure mode), for
/// history and for forwarding.
pub fn caller() -> Option<Identity> {
    CALLER.try_with(Clone::clone).ok().flatten()
}

/// Adds the caller of the call being served to a request this controller forwards to the
/// leader, so the leader checks and records the client, not this controller.
pub fn forward_caller<T>(request: &mut tonic::Request<T>) {
    if let Some(identity) = caller() {
        if let Ok(value) = identity.to_header().parse() {
            request.metadata_mut().insert(ON_BEHALF_OF, value);
        }
    }
}

/// The caller recorded in history for an admin action: the authenticated identity, and
/// what the client says about itself (`--actor`) when it differs.
pub fn actor(claimed: &str) -> String {
    match caller() {
        Some(identity) if claimed.is_empty() || claimed == identity.name => identity.to_string(),
        Some(identity) => format!("{identity} (as {claimed})"),
        None => claimed.to_owned(),
    }
}

/// Refuses an engine that is not bound to `site` (lease and executor calls).
pub fn require_site(site: &str) -> Result<(), tonic::Status> {
    match caller() {
        Some(identity) => {
            require_site_of(&identity, site).map_err(tonic::Status::permission_denied)
        }
        None => Ok(()),
    }
}

/// Why `identity`, if it is an engine, may not act for `site`; other roles pass (the
/// role table decides for them). For checks outside the call's scope (streams).
pub fn require_site_of(identity: &Identity, site: &str) -> Result<(), String> {
    if identity.role == Role::Engine && !identity.sites.iter().any(|s| s == site) {
        return Err(format!(
            "{identity} is bound to sites [{}], not {site}",
            identity.sites.join(", ")
        ));
    }
    Ok(())
}

/// Checks every call against [`ROLE_TABLE`] (module doc); a TLS connection without a
/// client certificate is identified by the call's bearer token.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Arc<[Token]>,
}

impl AuthLayer {
    /// A layer accepting the topology's bearer tokens (none: certificates only).
    pub fn new(tokens: &[failover_core::config::TokenConfig]) -> Self {
        let tokens: Vec<Token> = tokens.iter().filter_map(Token::from_config).collect();
        AuthLayer {
            tokens: tokens.into(),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the controller's gRPC services.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Arc<[Token]>,
}

/// A bearer token the topology lists: its SHA-256 and the identity it stands for.
#[derive(Debug, Clone)]
struct Token {
    sha256: [u8; 32],
    identity: Identity,
}

impl Token {
    /// `None` for an entry the topology check refuses (a controller never starts on one).
    fn from_config(config: &failover_core::config::TokenConfig) -> Option<Token> {
        let role = Role::parse(&config.role).filter(|r| *r != Role::Peer)?;
        let mut sha256 = [0u8; 32];
        for (i, byte) in sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(config.sha256.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Token {
            sha256,
            identity: Identity {
                role,
                name: config.name.clone(),
                sites: config.sites.iter().map(|s| s.to_string()).collect(),
            },
        })
    }
}

/// The hex SHA-256 of a bearer token: what the topology's `tokens:` entries hold.
pub fn token_sha256(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The identity of a call without a client certificate, from its `authorization:
/// Bearer <token>` header; `UNAUTHENTICATED` naming what is missing or wrong. Every
/// listed token's hash is compared in full (no early exit), so the time taken says
/// nothing about which bytes matched.
fn token_identity(
    tokens: &[Token],
    header: Option<&http::HeaderValue>,
) -> Result<Identity, tonic::Status> {
    let Some(header) = header else {
        return Err(tonic::Status::unauthenticated(
            "no client certificate and no bearer token: present a certificate signed by the \
             cluster CA, or send `authorization: Bearer <token>` (--token-file)",
        ));
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            tonic::Status::unauthenticated("the authorization header is not `Bearer <token>`")
        })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    let mut found = None;
    for candidate in tokens {
        let differ = candidate
            .sha256
            .iter()
            .zip(digest.as_ref())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ == 0 {
            found = Some(candidate.identity.clone());
        }
    }
    found.ok_or_else(|| {
        tonic::Status::unauthenticated(
            "the bearer token is not one of the topology's tokens (wrong, or revoked)",
        )
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<PeerInfo>();
        let remote = peer.and_then(|p| p.remote);
        // Insecure mode (or an in-process server): no identity, no checks.
        let Some(peer) = peer.filter(|p| p.secure) else {
            let future = self.inner.call(request);
            return Box::pin(REMOTE.scope(remote, CALLER.scope(None, future)));
        };
        // A certificate wins over a token.
        let identity = match &peer.identity {
            Some(identity) => Ok(identity.clone()),
            None => token_identity(
                &self.tokens,
                request.headers().get(http::header::AUTHORIZATION),
            ),
        };
        let mut identity = match identity {
            Ok(identity) => identity,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        if identity.role == Role::Peer {
            if let Some(on_behalf) = request
                .headers()
                .get(ON_BEHALF_OF)
                .and_then(|v| v.to_str().ok())
                .and_then(Identity::from_header)
            {
                identity = on_behalf;
            }
        }
        let path = request.uri().path();
        if !allowed(path, identity.role) {
            let status = tonic::Status::permission_denied(format!(
                "{identity} may not call {path}: the {} role does not allow it (docs/security.md, role table)",
                identity.role.as_str()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let future = self.inner.call(request);
        Box::pin(REMOTE.scope(remote, CALLER.scope(Some(identity), future)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_from_uris() {
        let id = Identity::from_uris(&[
            "failover://role/engine/a-host".to_owned(),
            "failover://site/site-a".to_owned(),
        ])
        .expect("engine");
        assert_eq!(id.role, Role::Engine);
        assert_eq!(id.sites, ["site-a"]);
        assert_eq!(id.to_string(), "engine/a-host");
        assert_eq!(Identity::from_header(&id.to_header()), Some(id));
        assert!(Identity::from_uris(&[]).unwrap_err().contains("no role"));
        assert!(Identity::from_uris(&["failover://role/admin/x".to_owned()])
            .unwrap_err()
            .contains("unknown role `admin`"));
    }

    #[test]
    fn bearer_tokens_name_their_identity() {
        let config = |name: &str, role: &str, sites: &[&str], token: &str| {
            failover_core::config::TokenConfig {
                name: name.into(),
                role: role.into(),
                sites: sites
                    .iter()
                    .map(|s| failover_core::SiteId((*s).into()))
                    .collect(),
                sha256: token_sha256(token),
            }
        };
        let layer = AuthLayer::new(&[
            config("dash", "reader", &[], "r-token"),
            config("batch", "engine", &["site-a"], "e-token"),
            config("sneaky", "peer", &[], "p-token"),
        ]);
        assert_eq!(layer.tokens.len(), 2, "a peer token is never accepted");
        let header = |v: &str| http::HeaderValue::from_str(v).expect("header");
        let reader =
            token_identity(&layer.tokens, Some(&header("Bearer r-token"))).expect("reader");
        assert_eq!(reader.to_string(), "reader/dash");
        let engine =
            token_identity(&layer.tokens, Some(&header("Bearer e-token"))).expect("engine");
        assert_eq!(engine.sites, ["site-a"]);
        let refused = |h: Option<&http::HeaderValue>| {
            let status = token_identity(&layer.tokens, h).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            status.message().to_owned()
        };
        assert!(refused(None).contains("no client certificate and no bearer token"));
        assert!(refused(Some(&header("Basic r-token"))).contains("not `Bearer <token>`"));
        assert!(refused(Some(&header("Bearer p-token"))).contains("not one of the topology's"));
        assert!(refused(Some(&header("Bearer r-tokem"))).contains("not one of the topology's"));
    }

    #[test]
    fn role_table() {
        let admin = "/failover.admin.v1.AdminService/";
        assert!(allowed(&format!("{admin}Status"), Role::Reader));
        assert!(!allowed(&format!("{admin}Promote"), Role::Reader));
        assert!(allowed(&format!("{admin}Promote"), Role::Operator));
        assert!(!allowed(&format!("{admin}Promote"), Role::Engine));
        assert!(!allowed(&format!("{admin}Promote"), Role::Peer));
        assert!(allowed("/failover.raft.v1.RaftService/Vote", Role::Peer));
        assert!(!allowed(
            "/failover.raft.v1.RaftService/Vote",
            Role::Operator
        ));
        assert!(allowed(
            "/failover.lease.v1.LeaseService/Acquire",
            Role::Engine
        ));
        assert!(!allowed(
            "/failover.lease.v1.LeaseService/Acquire",
            Role::Operator
        ));
        assert!(!allowed("/unknown.Service/X", Role::Operator));
    }
}

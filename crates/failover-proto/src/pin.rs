//! What every outgoing call carries besides its message: the cluster id the caller expects
//! ([`CLUSTER_HEADER`]) and, for clients without a certificate, a bearer
//! token (`authorization`). docs/security.md, "Cluster identity".
//!
//! [`PinnedChannel`] wraps the tonic `Channel` of every client of this workspace (the
//! CLI, lease sessions, executor reports, the controllers' Raft, forwarding and
//! confirmation clients): it adds the pinned id and the token to each request, reads the
//! id the controller answers with, pins it on the first answer when nothing is pinned
//! (learn-and-pin, for the process lifetime), and turns a different id into a
//! `FAILED_PRECONDITION` error naming both. [`ClusterPin`] is the state those channels
//! share: one per process (or per controller).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{Context, Future, Pin, Poll, Service, StdError};

/// Metadata key carrying the cluster id: on a request, the cluster the caller expects;
/// on an answer, the cluster the controller belongs to (docs/security.md, "Cluster
/// identity").
pub const CLUSTER_HEADER: &str = "x-failover-cluster";

/// Why `id` cannot be a cluster id (one rule, the topology's: 1 to 64 ASCII letters,
/// digits, `-`, `_` or `.`).
pub use failover_core::config::check_cluster_id;

/// The cluster id and credentials the channels of one process (or one controller) share.
/// Cloning shares them.
#[derive(Debug, Clone)]
pub struct ClusterPin {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The id sent with every call and expected in every answer.
    id: RwLock<Option<String>>,
    /// Whether the first id a controller answers with is pinned when none is.
    learn: AtomicBool,
    /// Sent as `authorization: Bearer <token>`.
    token: RwLock<Option<String>>,
    /// Controllers whose last answer named another cluster: address → the id they named.
    foreign: Mutex<BTreeMap<String, String>>,
}

impl Default for ClusterPin {
    fn default() -> Self {
        ClusterPin::learning()
    }
}

impl ClusterPin {
    /// Nothing pinned yet: the first id a controller answers with is pinned for the
    /// lifetime of this value (and its clones).
    pub fn learning() -> Self {
        ClusterPin {
            inner: Arc::new(Inner {
                id: RwLock::new(None),
                learn: AtomicBool::new(true),
                token: RwLock::new(None),
                foreign: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Pinned to `id` (`--cluster-id`): a controller of any other cluster is refused.
    pub fn pinned(id: impl Into<String>) -> Self {
        let pin = ClusterPin::learning();
        pin.set(Some(id.into()));
        pin
    }

    /// A pin to `id` when given, else a learning one.
    pub fn from_option(id: Option<String>) -> Self {
        match id {
            Some(id) => ClusterPin::pinned(id),
            None => ClusterPin::learning(),
        }
    }

    /// The pinned id, if any.
    pub fn id(&self) -> Option<String> {
        self.inner
            .id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pins `id` (or unpins); a controller sets its own id here once it is fixed.
    pub fn set(&self, id: Option<String>) {
        *self.inner.id.write().unwrap_or_else(|p| p.into_inner()) = id;
    }

    /// Whether the first answer's id is pinned when none is (default true). A controller
    /// turns this off: it adopts its id through the Raft log, never from an answer.
    pub fn set_learning(&self, learn: bool) {
        self.inner.learn.store(learn, Ordering::Relaxed);
    }

    /// The bearer token sent with every call, if any.
    pub fn token(&self) -> Option<String> {
        self.inner
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the bearer token sent with every call.
    pub fn set_token(&self, token: Option<String>) {
        *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// The controllers whose last answer named another cluster than the pinned one
    /// (address → the id they named).
    pub fn foreign(&self) -> BTreeMap<String, String> {
        self.inner
            .foreign
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds the pinned id and the token to an outgoing request's headers.
    pub fn outgoing(&self, headers: &mut HeaderMap) {
        if let Some(value) = self.id().and_then(|id| HeaderValue::try_from(id).ok()) {
            headers.insert(CLUSTER_HEADER, value);
        }
        if let Some(token) = self.token() {
            if let Ok(mut value) = HeaderValue::try_from(format!("Bearer {token}")) {
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
    }

    /// Checks the id the controller at `addr` answered with (`None`: it named none, as a
    /// controller whose cluster has no id yet): pins it if nothing is pinned and this pin
    /// learns; refuses a different one with `FAILED_PRECONDITION` naming both ids.
    pub fn check_answer(&self, addr: &str, answered: Option<&str>) -> Result<(), tonic::Status> {
        let Some(answered) = answered else {
            return Ok(());
        };
        let mut foreign = self.inner.foreign.lock().unwrap_or_else(|p| p.into_inner());
        let pinned = {
            let mut id = self.inner.id.write().unwrap_or_else(|p| p.into_inner());
            match &*id {
                Some(pinned) => pinned.clone(),
                None if self.inner.learn.load(Ordering::Relaxed) => {
                    *id = Some(answered.to_owned());
                    answered.to_owned()
                }
                None => return Ok(()),
            }
        };
        if pinned == answered {
            foreign.remove(addr);
            return Ok(());
        }
        foreign.insert(addr.to_owned(), answered.to_owned());
        Err(mismatch(addr, &pinned, answered))
    }
}

/// The error for an answer from a controller of another cluster.
fn mismatch(addr: &str, pinned: &str, answered: &str) -> tonic::Status {
    let mut status = tonic::Status::failed_precondition(format!(
        "the controller at {addr} belongs to cluster {answered}, but this client is for \
         cluster {pinned}: it is not the cluster this client was pinned to (--cluster-id) \
         or first talked to (docs/security.md, \"Cluster identity\")"
    ));
    if let Ok(value) = answered.parse() {
        status.metadata_mut().insert(CLUSTER_HEADER, value);
    }
    status
}

/// Whether `status` says a controller belongs to another cluster than the caller expects
/// (a refusal by the controller, or by the caller's [`PinnedChannel`]): retrying cannot
/// help.
pub fn is_cluster_mismatch(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status.metadata().contains_key(CLUSTER_HEADER)
}

/// The id a controller's answer names, if any.
fn answered_id(headers: &HeaderMap) -> Option<&str> {
    headers.get(CLUSTER_HEADER).and_then(|v| v.to_str().ok())
}

/// A channel to one controller that carries the [`ClusterPin`]'s id and token on every
/// call and checks the id of every answer (module doc).
#[derive(Debug, Clone)]
pub struct PinnedChannel<S = tonic::transport::Channel> {
    inner: S,
    pin: ClusterPin,
    addr: Arc<str>,
}

impl<S> PinnedChannel<S> {
    /// `inner` (a channel to the controller at `addr`) with `pin`'s headers and checks.
    pub fn new(inner: S, pin: ClusterPin, addr: &str) -> Self {
        PinnedChannel {
            inner,
            pin,
            addr: addr.into(),
        }
    }

    /// The shared pin.
    pub fn pin(&self) -> &ClusterPin {
        &self.pin
    }

    /// This channel carrying `pin` instead (a caller pinned to its own id).
    pub fn with_pin(mut self, pin: ClusterPin) -> Self {
        self.pin = pin;
        self
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> Service<http::Request<B>> for PinnedChannel<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<StdError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = StdError;
    type Future = BoxFuture<Result<http::Response<RB>, StdError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StdError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        self.pin.outgoing(request.headers_mut());
        let call = self.inner.call(request);
        let pin = self.pin.clone();
        let addr = self.addr.clone();
        Box::pin(async move {
            let response = call.await.map_err(Into::into)?;
            pin.check_answer(&addr, answered_id(response.headers()))
                .map_err(|status| Box::new(status) as StdError)?;
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_the_first_answer_and_refuses_another() {
        let pin = ClusterPin::learning();
        assert_eq!(pin.id(), None);
        assert!(pin.check_answer("a:1", None).is_ok());
        assert_eq!(pin.id(), None, "an answer without an id pins nothing");
        assert!(pin.check_answer("a:1", Some("aaaa")).is_ok());
        assert_eq!(pin.id().as_deref(), Some("aaaa"));
        let refused = pin.check_answer("b:2", Some("bbbb")).unwrap_err();
        assert!(is_cluster_mismatch(&refused));
        assert!(refused.message().contains("b:2 belongs to cluster bbbb"));
        assert!(refused.message().contains("for cluster aaaa"));
        assert_eq!(pin.foreign().get("b:2").map(String::as_str), Some("bbbb"));
        assert_eq!(pin.id().as_deref(), Some("aaaa"), "the pin never moves");
        assert!(pin.check_answer("b:2", Some("aaaa")).is_ok());
        assert!(
            pin.foreign().is_empty(),
            "a matching answer clears the mark"
        );
    }

    #[test]
    fn a_controller_pin_does_not_learn() {
        let pin = ClusterPin::learning();
        pin.set_learning(false);
        assert!(pin.check_answer("a:1", Some("aaaa")).is_ok());
        assert_eq!(pin.id(), None);
        pin.set(Some("cccc".into()));
        assert!(pin.check_answer("a:1", Some("aaaa")).is_err());
    }

    #[test]
    fn outgoing_headers() {
        let pin = ClusterPin::pinned("abc");
        let mut headers = HeaderMap::new();
        pin.outgoing(&mut headers);
        assert_eq!(answered_id(&headers), Some("abc"));
        assert!(headers.get(http::header::AUTHORIZATION).is_none());
        pin.set_token(Some("s3cret".into()));
        pin.outgoing(&mut headers);
        assert_eq!(
            headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            Some(b"Bearer s3cret".as_slice())
        );
        let mut none = HeaderMap::new();
        ClusterPin::learning().outgoing(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn cluster_id_syntax() {
        assert!(check_cluster_id("0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_cluster_id("prod-eu.1").is_ok());
        assert!(check_cluster_id("").unwrap_err().contains("empty"));
        assert!(check_cluster_id("a b").unwrap_err().contains("' '"));
        assert!(check_cluster_id(&"x".repeat(65))
            .unwrap_err()
            .contains("at most 64"));
    }

    /// A service answering every request with the given id in its headers, recording the
    /// id each request carried.
    #[derive(Clone)]
    struct Echo {
        answer: Option<&'static str>,
        seen: Arc<Mutex<Vec<Option<String>>>>,
    }

    impl Service<http::Request<()>> for Echo {
        type Response = http::Response<()>;
        type Error = StdError;
        type Future = BoxFuture<Result<http::Response<()>, StdError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), StdError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let sent = answered_id(request.headers()).map(str::to_owned);
            self.seen.lock().unwrap().push(sent);
            let mut response = http::Response::new(());
            if let Some(id) = self.answer {
                response
                    .headers_mut()
                    .insert(CLUSTER_HEADER, HeaderValue::from_static(id));
            }
            Box::pin(async move { Ok(response) })
        }
    }

    fn run<F: Future>(future: F) -> F::Output {
        // No runtime needed: the mock answers at once.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the mock answers at once"),
        }
    }

    #[test]
    fn the_channel_sends_the_pin_and_checks_answers() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pin = ClusterPin::learning();
        let mut a = PinnedChannel::new(
            Echo {
                answer: Some("aaaa"),
                seen: seen.clone(),
            },
            pin.clone(),
            "a:1",
        );
        let mut b = PinnedChannel::new(
            Echo {
                answer: Some("bbbb"),
                seen: seen.clone(),
            },
            pin.clone(),
            "b:2",
        );
        assert!(run(a.call(http::Request::new(()))).is_ok());
        assert!(run(a.call(http::Request::new(()))).is_ok());
        let error = run(b.call(http::Request::new(()))).unwrap_err();
        let status = tonic::Status::from_error(error);
        assert!(is_cluster_mismatch(&status), "{status:?}");
        assert!(status.message().contains("belongs to cluster bbbb"));
        assert_eq!(
            *seen.lock().unwrap(),
            [None, Some("aaaa".to_owned()), Some("aaaa".to_owned())],
            "nothing pinned on the first call, the learned id afterwards"
        );
    }
}

//! The admin API, tolerant of controllers that are down.
//!
//! Each call goes to the controller that answered last, and on a transport failure to
//! the next one, for at most `attempts` tries within `deadline`. Any controller can take
//! any call: it forwards to the leader itself.

use std::time::Duration;

use failover_proto::admin::admin_service_client::AdminServiceClient;
use failover_proto::admin::{
    DemoteRequest, HistoryRequest, HistoryResponse, LeasesRequest, LeasesResponse, PauseRequest,
    PauseResponse, PromoteRequest, PromoteResponse, ReloadRequest, ReloadResponse, ResumeRequest,
    StatusRequest, StatusResponse,
};
use std::sync::Arc;
use tokio::time::Instant;

use tonic::transport::Channel;
use tonic::Code;

use crate::endpoints::Endpoints;
use crate::transport::{Dialer, TcpDialer};

/// How long a promote with `wait` may take (the server gives up after 60 s).
const PROMOTE_WAIT: Duration = Duration::from_secs(65);

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A controller answered with an error (unknown group, invalid site, ...).
    #[error("{}", .0.message())]
    Refused(tonic::Status),
    /// No controller answered within the deadline.
    #[error("no controller answered ({tried}): {last}")]
    Unreachable {
        /// The addresses tried.
        tried: String,
        /// The last transport error.
        last: String,
    },
}

impl ClientError {
    /// The gRPC code of a refusal, `Unavailable` when nothing answered.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Refused(status) => status.code(),
            ClientError::Unreachable { .. } => Code::Unavailable,
        }
    }
}

/// An admin client over a set of controllers.
#[derive(Clone)]
pub struct AdminClient {
    endpoints: Endpoints,
    dialer: Arc<dyn Dialer>,
    preferred: usize,
    /// Total time one call may take across every retry.
    pub deadline: Duration,
    /// Time one attempt at one controller may take.
    pub attempt_timeout: Duration,
}

/// Whether a status means "try another controller" rather than "the answer is no".
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

impl AdminClient {
    /// A client that will try `endpoints` in order, over TCP.
    pub fn new(endpoints: Endpoints) -> Self {
        Self::with_dialer(endpoints, Arc::new(TcpDialer::default()))
    }

    /// A client that reaches controllers through `dialer`.
    pub fn with_dialer(endpoints: Endpoints, dialer: Arc<dyn Dialer>) -> Self {
        AdminClient {
            endpoints,
            dialer,
            preferred: 0,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        self.dialer.channel(addr).map_err(|e| e.to_string())
    }

    async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let addrs = self.endpoints.addrs().to_vec();
        let started = Instant::now();
        let mut last = String::from("not tried");
        let mut attempt = 0usize;
        while started.elapsed() < self.deadline {
            let index = (self.preferred + attempt) % addrs.len();
            let addr = &addrs[index];
            attempt += 1;
            match self.channel(addr) {
                Ok(channel) => match tokio::time::timeout(
                    self.attempt_timeout,
                    f(AdminServiceClient::new(channel)),
                )
                .await
                .unwrap_or_else(|_| Err(tonic::Status::unavailable("attempt timed out")))
                {
                    Ok(response) => {
                        self.preferred = index;
                        return Ok(response.into_inner());
                    }
                    Err(status) if is_transient(&status) => {
                        last = format!("{addr}: {}", status.message());
                    }
                    Err(status) => return Err(ClientError::Refused(status)),
                },
                Err(e) => last = format!("{addr}: {e}"),
            }
            if attempt.is_multiple_of(addrs.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(ClientError::Unreachable {
            tried: addrs.join(", "),
            last,
        })
    }

    /// Leader, term, controllers and groups.
    pub async fn status(&mut self) -> Result<StatusResponse, ClientError> {
        self.call(|mut c| async move { c.status(StatusRequest {}).await })
            .await
    }

    /// Starts making `site` active for `group` (with `wait`: returns once it is).
    pub async fn promote(
        &mut self,
        request: PromoteRequest,
    ) -> Result<PromoteResponse, ClientError> {
        let wait = request.wait;
        self.call_waiting(wait, |mut c| {
            let request = request.clone();
            async move { c.promote(request).await }
        })
        .await
    }

    /// Starts demoting `group`'s active site to none (with `wait`: returns once done).
    pub async fn demote(&mut self, request: DemoteRequest) -> Result<PromoteResponse, ClientError> {
        let wait = request.wait;
        self.call_waiting(wait, |mut c| {
            let request = request.clone();
            async move { c.demote(request).await }
        })
        .await
    }

    /// A call that, with `wait`, may last as long as an old site's drain: up to a TTL
    /// and more, so it gets the longer bound.
    async fn call_waiting<T, F, Fut>(&mut self, wait: bool, f: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let saved = (self.attempt_timeout, self.deadline);
        if wait {
            self.attempt_timeout = PROMOTE_WAIT;
            self.deadline = self.deadline.max(PROMOTE_WAIT);
        }
        let result = self.call(f).await;
        (self.attempt_timeout, self.deadline) = saved;
        result
    }

    /// Asks the executors of `site` for a rolling reload.
    pub async fn reload(&mut self, site: &str) -> Result<ReloadResponse, ClientError> {
        let site = site.to_owned();
        self.call(|mut c| {
            let request = ReloadRequest { site: site.clone() };
            async move { c.reload(request).await }
        })
        .await
    }

    /// Every lease, or those of `group`.
    pub async fn leases(&mut self, group: &str) -> Result<LeasesResponse, ClientError> {
        let group = group.to_owned();
        self.call(|mut c| {
            let request = LeasesRequest {
                group: group.clone(),
            };
            async move { c.leases(request).await }
        })
        .await
    }

    /// Every change of active site, oldest first; `group` empty for all groups.
    pub async fn history(&mut self, group: &str) -> Result<HistoryResponse, ClientError> {
        let group = group.to_owned();
        self.call(|mut c| {
            let request = HistoryRequest {
                group: group.clone(),
            };
            async move { c.history(request).await }
        })
        .await
    }

    /// Pauses automatic failover of a group (`group` empty: of every group).
    pub async fn pause(&mut self, request: PauseRequest) -> Result<PauseResponse, ClientError> {
        self.call(|mut c| {
            let request = request.clone();
            async move { c.pause(request).await }
        })
        .await
    }

    /// Ends a pause of a group (`group` empty: of every group).
    pub async fn resume(&mut self, request: ResumeRequest) -> Result<PauseResponse, ClientError> {
        self.call(|mut c| {
            let request = request.clone();
            async move { c.resume(request).await }
        })
        .await
    }
}

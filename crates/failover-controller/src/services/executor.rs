//! The executor report service: heartbeats and worker state from the site executors.

use std::sync::Arc;

use failover_proto::executor::executor_service_server::ExecutorService;
use failover_proto::executor::{DeregisterAck, DeregisterRequest, ExecutorReport, ReportAck};
use failover_proto::wire;
use tonic::{Request, Response, Status};

use super::lease::not_leader;
use super::NodeContext;

/// Serves executor reports (leader only).
pub struct ExecutorServer {
    ctx: Arc<NodeContext>,
}

impl ExecutorServer {
    /// A server over the controller's shared context.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        ExecutorServer { ctx }
    }
}

#[tonic::async_trait]
impl ExecutorService for ExecutorServer {
    async fn report(
        &self,
        request: Request<ExecutorReport>,
    ) -> Result<Response<ReportAck>, Status> {
        let now = self.ctx.clock.now();
        if !self.ctx.raft.is_leader() {
            return Err(not_leader(&self.ctx));
        }
        let report = request.into_inner();
        crate::auth::require_site(&report.site)?;
        wire::check_report(&report)?;
        if self.ctx.topology.site(&report.site).is_none() {
            return Err(Status::not_found(format!("unknown site `{}`", report.site)));
        }
        let reload_generation = self.ctx.executors.on_report(report, now);
        Ok(Response::new(ReportAck { reload_generation }))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterAck>, Status> {
        let now = self.ctx.clock.now();
        if !self.ctx.raft.is_leader() {
            return Err(not_leader(&self.ctx));
        }
        let request = request.into_inner();
        crate::auth::require_site(&request.site)?;
        wire::check_deregister(&request)?;
        let known = self.ctx.executors.deregister(
            &request.executor_id,
            &request.site,
            request.incarnation,
            now,
        );
        tracing::info!(
            executor = %request.executor_id,
            site = %request.site,
            known,
            "executor deregistered"
        );
        Ok(Response::new(DeregisterAck { known }))
    }
}

//! Health checks of a worker: a shell command (exit 0 is healthy) or an HTTP URL
//! (a 2xx answer is healthy), each with a timeout.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::process::Command;

/// How a worker's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `sh -c CMD` with the worker's environment; exit status 0 means healthy.
    Command(String),
    /// `GET URL` (`{port}` is replaced by the worker's PORT); a 2xx status means healthy.
    Url(String),
}

/// Time one check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl HealthCheck {
    /// Runs the check for a worker with environment `env` and port `port`.
    pub async fn run(&self, env: &[(String, String)], port: u16) -> bool {
        let check = async {
            match self {
                HealthCheck::Command(cmd) => Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .envs(env.iter().cloned())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .is_ok_and(|s| s.success()),
                HealthCheck::Url(url) => http_ok(&url.replace("{port}", &port.to_string())).await,
            }
        };
        tokio::time::timeout(CHECK_TIMEOUT, check)
            .await
            .unwrap_or(false)
    }
}

/// `GET url`; true on a 2xx status.
async fn http_ok(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    client.get(uri).await.is_ok_and(|r| r.status().is_success())
}

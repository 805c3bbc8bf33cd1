//! `--http [ADDR]` and `--http-token-file FILE`: the dashboard options of `listen`, `bridge`
//! and `demo`, flattened into each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tether_host::http::{Dashboard, HttpOptions, Observe, DEFAULT_ADDR};

use super::CliError;

#[derive(Debug, Clone, clap::Args)]
pub(super) struct HttpArgs {
    /// Serve a dashboard at ADDR (an IP address and port; 127.0.0.1:8080 if none is given):
    /// the devices, a live plot of a device's readings, a command box and the log, with
    /// /metrics (Prometheus) and a JSON API (/api/devices). Off loopback it needs
    /// --http-token-file.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_ADDR)]
    pub(super) http: Option<SocketAddr>,
    /// A file (mode 600) whose first line is the token the dashboard's API, event stream and
    /// /metrics require (at least 16 characters); required when --http is not a loopback
    /// address.
    #[arg(long, value_name = "FILE", requires = "http")]
    pub(super) http_token_file: Option<PathBuf>,
}

impl HttpArgs {
    /// The dashboard's options, if --http was given.
    pub(super) fn options(&self) -> Option<HttpOptions> {
        self.http.map(|addr| HttpOptions {
            addr,
            token_file: self.http_token_file.clone(),
        })
    }

    /// Starts the dashboard of `view` if --http was given, and logs where it is.
    pub(super) async fn start(
        &self,
        view: Arc<dyn Observe>,
        title: String,
    ) -> Result<Option<Dashboard>, CliError> {
        let Some(opts) = self.options() else {
            return Ok(None);
        };
        let d = tether_host::http::start(&opts, view, title).await?;
        tracing::info!("dashboard on {}", d.url());
        Ok(Some(d))
    }
}

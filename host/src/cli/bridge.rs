//! `tether bridge`: devices' sessions forwarded to a listener, or written to a CSV here.

use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use tether_host::endpoint::Endpoint;

use super::http::HttpArgs;
use super::listen::listen;
use super::listen::ListenArgs;
use super::{shutdown_signal, CliError, ServeArgs};

#[derive(Debug, clap::Args)]
pub(super) struct BridgeArgs {
    /// Where devices connect, e.g. rfcomm://hci0/1 or rfcomm:///1 (default adapter), or
    /// tcp://ADDRESS:PORT.
    from: Endpoint,
    /// The listener to forward to (tcp://HOST:PORT), or where to write here, as tether
    /// listen --sink: csv:FILE, csv-dir:DIR, jsonl:FILE (or jsonl:-), an MQTT broker
    /// (mqtt://HOST:PORT/PREFIX) or a PostgreSQL database (postgres://USER@HOST:PORT/DB).
    to: tether_host::bridge::Target,
    #[command(flatten)]
    serve: ServeArgs,
    /// The longest wait, in milliseconds, between attempts to reach the listener.
    #[arg(long, default_value_t = 5_000)]
    max_backoff_ms: u64,
    /// With csv:FILE or jsonl:FILE: acknowledge records only once they are on disk (fsync
    /// per batch), as tether listen --fsync. Forwarding to a listener, give that listener
    /// --fsync.
    #[arg(long)]
    fsync: bool,
    /// With csv:FILE: authenticate devices, as tether listen --keys (a file of
    /// `DEVICE_ID HEX_KEY` lines, mode 600). Not yet when forwarding to a listener.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// With postgres://…: the database's password, in a file of mode 600, as tether listen
    /// --password-file.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    http: HttpArgs,
}

pub(super) async fn bridge(args: BridgeArgs) -> Result<ExitCode, CliError> {
    let shutdown = shutdown_signal();
    use tether_host::bridge::{Bridge, BridgeOptions, Target};
    let to = match args.to {
        Target::Upstream(to) => to,
        Target::Csv(_) | Target::Sink(_) => {
            // Writing locally (a CSV here, a broker, a database), the bridge is a listener,
            // with the listener's options.
            let (csv, sink) = match args.to {
                Target::Sink(d) => (None, Some(d)),
                Target::Csv(csv) => (Some(csv), None),
                Target::Upstream(_) => (None, None),
            };
            return listen(ListenArgs {
                endpoints: vec![args.from],
                csv,
                csv_dir: None,
                sink,
                password_file: args.password_file,
                fsync: args.fsync,
                serve: args.serve,
                raw: false,
                keys: args.keys,
                http: args.http,
            })
            .await;
        }
    };
    // Options of a CSV written here, refused rather than dropped when forwarding.
    let only_csv = |option: &str, instead: &str| {
        CliError::Bridge(tether_host::bridge::BridgeError::Options(format!(
            "{option} applies to csv:FILE only (the bridge writing the CSV itself); {instead}"
        )))
    };
    if args.fsync {
        return Err(only_csv(
            "--fsync",
            "forwarding to a listener, the listener writes: give it --fsync",
        ));
    }
    if args.keys.is_some() {
        return Err(only_csv(
            "--keys",
            "authenticated links through the bridge to a listener are not supported yet",
        ));
    }
    if args.password_file.is_some() {
        return Err(CliError::Bridge(tether_host::bridge::BridgeError::Options(
            "--password-file is the password of a postgres://… target; forwarding to a \
             listener, the listener writes"
                .into(),
        )));
    }
    let mut opts = BridgeOptions::new(vec![args.from], to);
    tether_host::set_serving!(opts, args.serve.serving());
    opts.max_backoff = Duration::from_millis(args.max_backoff_ms.max(100));
    let bridge = Bridge::bind(opts.clone()).await?;
    let endpoints = bridge.describe_endpoints();
    for a in &endpoints {
        tracing::info!("bridging devices on {a} to {}", opts.to);
    }
    let title = format!("tether bridge {} → {}", endpoints.join(" "), opts.to);
    let dashboard = args.http.start(bridge.observer(), title).await?;
    let s = bridge.run(shutdown).await?;
    if let Some(d) = dashboard {
        d.stop().await;
    }
    tracing::info!(
        "done: {} records forwarded and acknowledged from {} devices over {} connections ({} dropped); {} upstream connections",
        s.forwarded,
        s.devices,
        s.connections,
        s.dropped_connections,
        s.upstream_connections
    );
    Ok(ExitCode::SUCCESS)
}

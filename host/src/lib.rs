//! Tether on Linux: the `tether` command's library.
//!
//! - [`listen`]: a server that logs many devices to CSV, acknowledging each record only once
//!   it is written;
//! - [`send`]: a client that streams lines as records and resumes across broken
//!   connections;
//! - [`demo`]: a listener and simulated devices on loopback, the README's main job;
//! - [`sim`]: simulated devices through a fault injector, and the CSV check;
//! - [`bridge`]: devices' sessions forwarded to a listener, acknowledged end to end (the
//!   Raspberry Pi's job);
//! - [`session`]: the session engine listen and bridge share (HELLO → session → link:
//!   admission, `--max-devices`, eviction, the per-connection pump);
//! - [`http`]: the dashboard (`--http`): the devices, a live plot, commands, the log,
//!   `/metrics` and a JSON API, served by the process itself; [`top`]: the same in a
//!   terminal (`tether top`);
//! - [`endpoint`], [`transport`] (TCP and, with the `bluetooth` feature, RFCOMM as one
//!   stream type), [`bluetooth`] (BlueZ and its errors), [`sink`], [`storage`], [`clock`]: the
//!   pieces they share;
//! - [`mqtt`]: the MQTT sink (`--sink mqtt://…`), through [`deferred`], the seam of sinks that
//!   acknowledge records after they were handed over.
//!
//! All drive `tether_core::link::Link` over tokio streams: the protocol lives in the core,
//! the host only moves bytes, keeps time and writes files.

pub mod bluetooth;
pub mod bridge;
pub mod clock;
pub mod console;
pub mod deferred;
pub mod demo;
pub mod endpoint;
pub mod http;
pub mod keys;
pub mod listen;
pub mod mqtt;
pub mod options;
pub mod raw;
pub mod recover;
pub mod send;
pub mod session;
pub mod sim;
pub mod sink;
pub mod storage;
pub mod top;
pub mod transport;

/// A session identity for this process: random enough that a restarted program is told
/// apart from the one before (the standard library's per-process random hash keys, mixed
/// with the time), never 0.
pub fn random_session() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() as u32).max(1)
}

/// Turns on TCP keepalive (first probe after 10 s of silence, then every 5 s, 3 probes), so
/// the kernel too notices a peer that vanished without closing (power loss, a pulled cable).
/// The link's own PINGs and idle time-out catch it as well; this covers the time before a
/// handshake and peers that do not speak Tether (`--raw`). Best effort: an error is ignored.
pub fn tcp_keepalive(stream: &tokio::net::TcpStream) {
    let params = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(10))
        .with_interval(std::time::Duration::from_secs(5))
        .with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&params);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn keepalive_is_on_for_both_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for s in [&client, &server] {
            super::tcp_keepalive(s);
            let r = socket2::SockRef::from(s);
            assert!(r.keepalive().unwrap());
            assert_eq!(
                r.tcp_keepalive_time().unwrap(),
                std::time::Duration::from_secs(10)
            );
        }
    }
}

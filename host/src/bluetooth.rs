//! Bluetooth RFCOMM through BlueZ: listening on a channel of an adapter, connecting to a
//! device, and errors a person can act on.
//!
//! The D-Bus side (bluer's `Session`, `Adapter`) checks that bluetoothd runs, finds the
//! adapter, checks that it is powered and makes a listening adapter connectable; the data
//! then flows over kernel RFCOMM sockets. The error mapping is plain code over error names
//! and OS error numbers, so it is unit-tested on machines without Bluetooth.

use std::io;

/// Why Bluetooth could not be used, each with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BluetoothError {
    /// The binary was built without the `bluetooth` feature.
    #[error(
        "this tether was built without Bluetooth support: rebuild with the `bluetooth` cargo \
         feature (on by default)"
    )]
    NotBuilt,
    /// The kernel has no Bluetooth sockets.
    #[error(
        "this Linux kernel has no Bluetooth support ({0}): load it with `sudo modprobe bluetooth \
         rfcomm`, or use a kernel built with Bluetooth"
    )]
    NoKernelSupport(String),
    /// No D-Bus system bus to talk to bluetoothd through.
    #[error(
        "bluetoothd is not running: there is no D-Bus system bus ({0}); start D-Bus and \
         BlueZ: `sudo systemctl start dbus bluetooth`"
    )]
    NoSystemBus(String),
    /// The system bus is there, bluetoothd is not.
    #[error(
        "bluetoothd is not running (no org.bluez on the D-Bus system bus: {0}); start it with \
         `sudo systemctl start bluetooth` (install it with `sudo apt install bluez`)"
    )]
    DaemonNotRunning(String),
    /// No such adapter, or none at all.
    #[error(
        "no Bluetooth adapter {}: check `bluetoothctl list` (and `rfkill list`); on a Raspberry \
         Pi the built-in one is hci0",
        .0.as_deref().map(|a| format!("named {a}")).unwrap_or_else(|| "found".into())
    )]
    NoAdapter(Option<String>),
    /// The adapter is there and switched off.
    #[error(
        "Bluetooth adapter {0} is powered off: `bluetoothctl power on` (if it is blocked: \
         `sudo rfkill unblock bluetooth`)"
    )]
    AdapterOff(String),
    /// Not allowed.
    #[error(
        "permission denied ({0}): run tether as root, or allow your user to use Bluetooth \
         (the `bluetooth` group and BlueZ's D-Bus policy)"
    )]
    PermissionDenied(String),
    /// The device answered and refused.
    #[error(
        "{0} refused the connection: is `tether listen rfcomm://…` running there, on that \
         channel?"
    )]
    Refused(String),
    /// The device did not answer.
    #[error(
        "{0} is not reachable (host down or out of range: {1}): is it powered, within range, \
         and connectable? (`tether listen rfcomm://…` makes its adapter connectable)"
    )]
    HostDown(String, String),
    /// The channel is taken.
    #[error("RFCOMM channel {0} is already in use on this adapter: choose another channel")]
    ChannelInUse(u8),
    /// Anything else, as the system said it.
    #[error("Bluetooth: {0}")]
    Other(String),
}

impl BluetoothError {
    /// Whether trying again cannot help without a person doing something.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            BluetoothError::Refused(_) | BluetoothError::HostDown(..) | BluetoothError::Other(_)
        )
    }
}

/// Maps a D-Bus error (by name) met while talking to bluetoothd.
pub fn from_dbus(name: &str, message: &str, adapter: Option<&str>) -> BluetoothError {
    let what = if message.is_empty() { name } else { message }.to_owned();
    match name {
        "org.freedesktop.DBus.Error.FileNotFound"
        | "org.freedesktop.DBus.Error.NoServer"
        | "org.freedesktop.DBus.Error.NoSocket"
        | "org.freedesktop.DBus.Error.Disconnected" => BluetoothError::NoSystemBus(what),
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner"
        | "org.freedesktop.DBus.Error.NoReply" => BluetoothError::DaemonNotRunning(what),
        "org.freedesktop.DBus.Error.AccessDenied"
        | "org.freedesktop.DBus.Error.AuthFailed"
        | "org.bluez.Error.NotAuthorized"
        | "org.bluez.Error.NotPermitted" => BluetoothError::PermissionDenied(what),
        "org.freedesktop.DBus.Error.UnknownObject"
        | "org.freedesktop.DBus.Error.UnknownMethod"
        | "org.freedesktop.DBus.Error.UnknownInterface" => {
            BluetoothError::NoAdapter(adapter.map(str::to_owned))
        }
        "org.bluez.Error.NotReady" => {
            BluetoothError::AdapterOff(adapter.unwrap_or("(default)").to_owned())
        }
        // D-Bus tried to start bluetoothd on demand and could not (not installed, disabled,
        // or no service manager to start it).
        _ if name.starts_with("org.freedesktop.DBus.Error.Spawn.") => {
            BluetoothError::DaemonNotRunning(what)
        }
        _ if message.contains("system_bus_socket") => BluetoothError::NoSystemBus(what),
        _ => BluetoothError::Other(format!("{name}: {message}")),
    }
}

/// Where an OS error happened, to name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Opening or binding a socket on a channel.
    Listen(u8),
    /// Connecting to a device (its address and channel, for the message).
    Connect(&'a str),
}

/// Maps an OS error from an RFCOMM socket.
pub fn from_io(e: &io::Error, op: Op<'_>) -> BluetoothError {
    const EPERM: i32 = 1;
    const EACCES: i32 = 13;
    const ENODEV: i32 = 19;
    const EAFNOSUPPORT: i32 = 97;
    const EADDRINUSE: i32 = 98;
    const EADDRNOTAVAIL: i32 = 99;
    const ENETDOWN: i32 = 100;
    const ETIMEDOUT: i32 = 110;
    const ECONNREFUSED: i32 = 111;
    const EHOSTDOWN: i32 = 112;
    const EHOSTUNREACH: i32 = 113;
    let text = e.to_string();
    match (e.raw_os_error(), op) {
        (Some(EAFNOSUPPORT), _) => BluetoothError::NoKernelSupport(text),
        (Some(EPERM | EACCES), _) => BluetoothError::PermissionDenied(text),
        (Some(EADDRINUSE), Op::Listen(ch)) => BluetoothError::ChannelInUse(ch),
        (Some(ENODEV | EADDRNOTAVAIL), _) => BluetoothError::NoAdapter(None),
        (Some(ECONNREFUSED), Op::Connect(who)) => BluetoothError::Refused(who.to_owned()),
        (Some(EHOSTDOWN | EHOSTUNREACH | ETIMEDOUT | ENETDOWN), Op::Connect(who)) => {
            BluetoothError::HostDown(who.to_owned(), text)
        }
        _ => BluetoothError::Other(text),
    }
}

#[cfg(feature = "bluetooth")]
pub use imp::*;

#[cfg(feature = "bluetooth")]
mod imp {
    use std::io;
    use std::time::Duration;

    use bluer::rfcomm::{Socket, SocketAddr, Stream};
    use bluer::{Adapter, Address, ErrorKind, InternalErrorKind, Session};
    use tracing::{debug, info, warn};

    use super::{from_dbus, from_io, BluetoothError, Op};
    use crate::endpoint::BdAddr;

    /// Maps an error of bluer's D-Bus side.
    pub fn from_bluer(e: &bluer::Error, adapter: Option<&str>) -> BluetoothError {
        match &e.kind {
            ErrorKind::NotFound | ErrorKind::DoesNotExist => {
                BluetoothError::NoAdapter(adapter.map(str::to_owned))
            }
            ErrorKind::InvalidName(n) => BluetoothError::NoAdapter(Some(n.clone())),
            ErrorKind::NotReady => {
                BluetoothError::AdapterOff(adapter.unwrap_or("(default)").to_owned())
            }
            ErrorKind::NotAuthorized | ErrorKind::NotPermitted => {
                BluetoothError::PermissionDenied(e.to_string())
            }
            ErrorKind::Internal(InternalErrorKind::DBus(name)) => {
                from_dbus(name, &e.message, adapter)
            }
            ErrorKind::Internal(InternalErrorKind::DBusConnectionLost) => {
                BluetoothError::NoSystemBus(e.to_string())
            }
            ErrorKind::Internal(InternalErrorKind::Io(io::ErrorKind::PermissionDenied)) => {
                BluetoothError::PermissionDenied(e.to_string())
            }
            ErrorKind::Internal(InternalErrorKind::Io(io::ErrorKind::NotFound)) => {
                BluetoothError::NoSystemBus(e.to_string())
            }
            _ => BluetoothError::Other(e.to_string()),
        }
    }

    /// A D-Bus session with bluetoothd and the adapter asked for (or the default one),
    /// checked to exist and to be powered.
    async fn powered_adapter(
        name: Option<&str>,
    ) -> Result<(Session, Adapter, Address), BluetoothError> {
        let session = Session::new().await.map_err(|e| from_bluer(&e, name))?;
        let adapter = match name {
            Some(n) => session.adapter(n).map_err(|e| from_bluer(&e, name))?,
            None => session
                .default_adapter()
                .await
                .map_err(|e| from_bluer(&e, None))?,
        };
        let n = Some(adapter.name());
        let powered = adapter.is_powered().await.map_err(|e| from_bluer(&e, n))?;
        if !powered {
            return Err(BluetoothError::AdapterOff(adapter.name().to_owned()));
        }
        let address = adapter.address().await.map_err(|e| from_bluer(&e, n))?;
        Ok((session, adapter, address))
    }

    /// An RFCOMM channel listened on. Keeps its D-Bus session for its life.
    pub struct RfcommAcceptor {
        listener: bluer::rfcomm::Listener,
        _session: Session,
        adapter: String,
        address: Address,
        channel: u8,
    }

    impl RfcommAcceptor {
        /// Listens on `channel` of the adapter (or the default one), after checking that
        /// bluetoothd runs and the adapter is powered, and makes the adapter connectable
        /// (discoverable, without time-out) so that devices can page it.
        pub async fn bind(adapter: Option<&str>, channel: u8) -> Result<Self, BluetoothError> {
            let (session, ad, address) = powered_adapter(adapter).await?;
            let name = ad.name().to_owned();
            // bluetoothd powers an adapter without making it connectable: a device would
            // then fail with "host down". Discoverable implies connectable.
            // It is left so at exit: another listener may use the same adapter.
            let _ = ad.set_discoverable_timeout(0).await;
            let was = ad.is_discoverable().await.unwrap_or(false);
            match ad.set_discoverable(true).await {
                Ok(()) if !was => info!(
                    "{name} made discoverable so that devices can connect; it stays so after \
                     tether exits: `bluetoothctl discoverable off` hides it"
                ),
                Ok(()) => {}
                Err(e) => warn!(
                    "could not make {name} discoverable ({e}); devices that are not paired may \
                     fail to connect: `bluetoothctl discoverable on`"
                ),
            }
            let listen = |e: io::Error| from_io(&e, Op::Listen(channel));
            let socket = Socket::new().map_err(listen)?;
            socket
                .bind(SocketAddr::new(address, channel))
                .map_err(listen)?;
            let listener = socket.listen(16).map_err(listen)?;
            info!("listening on RFCOMM channel {channel} of {name} ({address})");
            Ok(RfcommAcceptor {
                listener,
                _session: session,
                adapter: name,
                address,
                channel,
            })
        }

        /// The adapter's name.
        pub fn adapter(&self) -> &str {
            &self.adapter
        }

        /// The adapter's Bluetooth address.
        pub fn address(&self) -> BdAddr {
            BdAddr(self.address.0)
        }

        /// The channel.
        pub fn channel(&self) -> u8 {
            self.channel
        }

        /// The next device, and its address for logs.
        pub async fn accept(&self) -> io::Result<(Stream, String)> {
            let (s, peer) = self.listener.accept().await?;
            Ok((s, peer.to_string()))
        }
    }

    impl std::fmt::Debug for RfcommAcceptor {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "RfcommAcceptor({}/{})", self.adapter, self.channel)
        }
    }

    /// Connects to `addr` on `channel`, from the adapter named (or any), once bluetoothd and
    /// a powered adapter are confirmed; returns when the link is really up.
    pub async fn connect(
        adapter: Option<&str>,
        addr: BdAddr,
        channel: u8,
    ) -> Result<Stream, BluetoothError> {
        let (_session, _ad, local) = powered_adapter(adapter).await?;
        let who = format!("{addr} (channel {channel})");
        let op = |e: io::Error| from_io(&e, Op::Connect(&who));
        let socket = Socket::new().map_err(op)?;
        let from = if adapter.is_some() {
            local
        } else {
            Address::any()
        };
        socket.bind(SocketAddr::new(from, 0)).map_err(op)?;
        // What the remote answers: a device that refuses the channel (nobody listens on it,
        // or its security refuses us) makes the connect fail with ECONNREFUSED on some
        // kernels and with EACCES on others (Debian's 6.1.192, seen in the BlueZ VM test).
        // Both are its refusal, worth retrying: not this side's permission, which shows at
        // the socket or bind above.
        let remote = |e: io::Error| match e.raw_os_error() {
            Some(1 | 13) => BluetoothError::Refused(who.clone()),
            _ => op(e),
        };
        let stream = socket
            .connect(SocketAddr::new(Address(addr.0), channel))
            .await
            .map_err(remote)?;
        // bluer 0.17 may return from connect before the RFCOMM channel is up (its issue
        // 167): the first write then fails with ENOTCONN. Wait until the kernel reports the
        // connection (RFCOMM_CONNINFO answers only then), or for its failure.
        let started = tokio::time::Instant::now();
        loop {
            match stream.as_ref().conn_info() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(107) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        return Err(from_io(&e, Op::Connect(&who)));
                    }
                    // A failed connect shows as a read error (refused, host down).
                    let mut b = [0u8; 1];
                    if let Ok(Err(e)) =
                        tokio::time::timeout(Duration::from_millis(10), stream.peek(&mut b)).await
                    {
                        if e.raw_os_error() != Some(107) {
                            return Err(remote(e));
                        }
                    }
                }
                Err(e) => return Err(op(e)),
            }
        }
        debug!("connected to {who} after {:?}", started.elapsed());
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbus_errors_become_what_to_do() {
        let e = from_dbus(
            "org.freedesktop.DBus.Error.FileNotFound",
            "Failed to connect to socket /run/dbus/system_bus_socket: No such file or directory",
            None,
        );
        assert!(matches!(e, BluetoothError::NoSystemBus(_)));
        assert!(e.to_string().contains("bluetoothd is not running"), "{e}");
        let e = from_dbus(
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "The name org.bluez was not provided by any .service files",
            None,
        );
        assert!(matches!(e, BluetoothError::DaemonNotRunning(_)));
        assert!(e.to_string().contains("systemctl start bluetooth"), "{e}");
        // Seen in the BlueZ VM with bluetoothd stopped: D-Bus tries to start it on demand.
        let e = from_dbus(
            "org.freedesktop.DBus.Error.Spawn.ChildExited",
            "Launch helper exited with unknown return code 1",
            None,
        );
        assert!(matches!(e, BluetoothError::DaemonNotRunning(_)), "{e:?}");
        let e = from_dbus("org.freedesktop.DBus.Error.UnknownObject", "", Some("hci3"));
        assert_eq!(e, BluetoothError::NoAdapter(Some("hci3".into())));
        assert!(e.to_string().contains("named hci3"), "{e}");
        assert!(matches!(
            from_dbus("org.freedesktop.DBus.Error.AccessDenied", "no", None),
            BluetoothError::PermissionDenied(_)
        ));
        assert_eq!(
            from_dbus(
                "org.bluez.Error.NotReady",
                "Resource Not Ready",
                Some("hci0")
            ),
            BluetoothError::AdapterOff("hci0".into())
        );
        assert!(matches!(
            from_dbus("org.example.Strange", "what", None),
            BluetoothError::Other(_)
        ));
    }

    #[test]
    fn os_errors_become_what_to_do() {
        let os = io::Error::from_raw_os_error;
        let who = "AA:BB:CC:DD:EE:FF (channel 1)";
        assert!(matches!(
            from_io(&os(97), Op::Listen(1)),
            BluetoothError::NoKernelSupport(_)
        ));
        assert!(matches!(
            from_io(&os(13), Op::Connect(who)),
            BluetoothError::PermissionDenied(_)
        ));
        assert!(matches!(
            from_io(&os(1), Op::Listen(1)),
            BluetoothError::PermissionDenied(_)
        ));
        assert_eq!(
            from_io(&os(98), Op::Listen(3)),
            BluetoothError::ChannelInUse(3)
        );
        let refused = from_io(&os(111), Op::Connect(who));
        assert_eq!(refused, BluetoothError::Refused(who.into()));
        assert!(!refused.is_permanent());
        let down = from_io(&os(112), Op::Connect(who));
        assert!(matches!(down, BluetoothError::HostDown(..)));
        assert!(down.to_string().contains("connectable"), "{down}");
        assert!(!down.is_permanent());
        assert!(from_io(&os(97), Op::Listen(1)).is_permanent());
        assert!(BluetoothError::NoAdapter(None).is_permanent());
    }

    /// On a machine without Bluetooth (this project's build machines: no AF_BLUETOOTH in the
    /// kernel, no D-Bus system bus, no bluetoothd), listening and connecting fail at once
    /// with a message that says bluetoothd is not running or the kernel lacks Bluetooth;
    /// where BlueZ runs, this test has nothing to check.
    #[cfg(feature = "bluetooth")]
    #[tokio::test]
    async fn without_bluez_the_errors_say_what_is_missing() {
        let bus = std::path::Path::new("/run/dbus/system_bus_socket").exists();
        if bus {
            eprintln!("a D-Bus system bus is running here: nothing to check");
            return;
        }
        let e = RfcommAcceptor::bind(Some("hci0"), 1).await.unwrap_err();
        assert!(matches!(e, BluetoothError::NoSystemBus(_)), "{e:?}");
        assert!(e.is_permanent());
        assert!(e.to_string().contains("bluetoothd is not running"), "{e}");
        let device = crate::endpoint::BdAddr([0xAA, 0xBB, 0xCC, 0, 0, 1]);
        let e = connect(None, device, 1).await.unwrap_err();
        assert!(matches!(e, BluetoothError::NoSystemBus(_)), "{e:?}");
    }
}

//! The device model on its own: commands, replies, release-after-acting, reconnection and
//! the embedded-io driver, over a clean link with a virtual clock.

use tether_core::link::{Config, ConfigError, Instant, Link, LinkStorage, Phase, Role};
use tether_core::record::Fields;
use tether_firmware_sim::device::{
    Command, CommandError, Device, DeviceConfig, DeviceError, DriveError, ERROR_TEXT_MAX,
};
use tether_firmware_sim::fault::{Cut, FaultConfig, FaultPipe, Side};

type Store = LinkStorage<4, 4, 128>;
type HostStore = LinkStorage<16, 16, 128>;

fn device(period_ms: u32) -> Device<Store> {
    Device::new(
        DeviceConfig {
            period_ms,
            ..DeviceConfig::new(0xD1, 1)
        },
        Store::new(),
    )
    .expect("a valid configuration")
}

/// A device and a host over a clean in-memory pipe, with a virtual clock.
struct Bench {
    device: Device<Store>,
    host: Link<HostStore>,
    pipe: FaultPipe<8192>,
    now: u64,
    /// The host's application releases what it receives.
    host_releases: bool,
    /// Records the host application took, as field lists rendered with `{:?}`.
    got: Vec<Vec<String>>,
}

impl Bench {
    fn new(device: Device<Store>) -> Bench {
        let mut b = Bench {
            device,
            host: Link::new(Config::new(Role::Server, 0x57), HostStore::new()).unwrap(),
            pipe: FaultPipe::new(FaultConfig::clean(0)),
            now: 0,
            host_releases: true,
            got: Vec::new(),
        };
        b.device.transport_up(b.t()).unwrap();
        b.host.connect(b.t());
        b
    }

    fn t(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    /// Runs `ms` milliseconds of virtual time, one millisecond a step.
    fn run(&mut self, ms: u64) {
        let mut buf = [0u8; 512];
        for _ in 0..ms {
            let t = self.t();
            while let Ok(n @ 1..) = self.pipe.pull(Side::B, &mut buf) {
                self.host.handle_input(t, &buf[..n]);
            }
            while let Ok(n @ 1..) = self.pipe.pull(Side::A, &mut buf) {
                self.device.handle_input(t, &buf[..n]);
            }
            self.device.poll(t);
            self.host.handle_timeout(t);
            if self.host_releases {
                let got: Vec<Vec<String>> =
                    self.host.received().map(|r| render(r.payload)).collect();
                self.host.release(got.len());
                self.got.extend(got);
            }
            while let Some(n) = self.device.poll_transmit(t, &mut buf) {
                assert_eq!(self.pipe.push(Side::A, &buf[..n]), Ok(n));
            }
            while let Some(n) = self.host.poll_transmit(t, &mut buf) {
                assert_eq!(self.pipe.push(Side::B, &buf[..n]), Ok(n));
            }
            self.now += 1;
        }
    }

    fn replies(&self) -> Vec<&Vec<String>> {
        self.got
            .iter()
            .filter(|r| r[0].starts_with("Str"))
            .collect()
    }
}

fn render(payload: &[u8]) -> Vec<String> {
    Fields::new(payload)
        .expect("typed")
        .map(|f| format!("{:?}", f.expect("well-formed")))
        .collect()
}

#[test]
fn commands_parse_strictly_and_never_panic() {
    let ok: &[(&[u8], Command)] = &[
        (b"rate 50", Command::Rate(50)),
        (b"  RATE\t1\r\n", Command::Rate(1)),
        (b"rate 3600000", Command::Rate(3_600_000)),
        (b"output on", Command::Output(true)),
        (b"Output OFF\n", Command::Output(false)),
        (b"status", Command::Status),
    ];
    for (text, want) in ok {
        assert_eq!(
            Command::parse(text),
            Ok(*want),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
    let bad: &[(&[u8], CommandError)] = &[
        (b"", CommandError::Empty),
        (b" \r\n", CommandError::Empty),
        (b"reboot", CommandError::Unknown),
        (b"rate", CommandError::MissingArgument),
        (b"rate 0", CommandError::BadArgument),
        (b"rate 3600001", CommandError::BadArgument),
        (b"rate -5", CommandError::BadArgument),
        (b"rate 99999999999999999999", CommandError::BadArgument),
        (b"output", CommandError::MissingArgument),
        (b"output maybe", CommandError::BadArgument),
        (b"status now", CommandError::ExtraArgument),
        (b"rate 5 5", CommandError::ExtraArgument),
        (b"rate \xff", CommandError::NotUtf8),
        (b"\x1e\x04\x01\x00\x00\x00", CommandError::NotText),
    ];
    for (text, want) in bad {
        assert_eq!(Command::parse(text), Err(*want), "{text:02x?}");
    }
    // Arbitrary bytes: never a panic.
    let mut rng = tether_firmware_sim::rng::XorShift::new(5);
    for _ in 0..20_000 {
        let len = rng.below(12) as usize;
        let alphabet = b"rate output on off status 0123456789 \xff\x1e";
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        let _ = Command::parse(&bytes);
    }
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let server = DeviceConfig {
        link: Config::new(Role::Server, 1),
        ..DeviceConfig::new(1, 1)
    };
    assert_eq!(
        Device::new(server, Store::new()).err(),
        Some(DeviceError::NotClient)
    );
    let still = DeviceConfig {
        period_ms: 0,
        ..DeviceConfig::new(1, 1)
    };
    assert_eq!(
        Device::new(still, Store::new()).err(),
        Some(DeviceError::Period(0))
    );
    let mut small = DeviceConfig::new(1, 1);
    small.link.max_send = 32;
    assert_eq!(
        Device::new(small, Store::new()).err(),
        Some(DeviceError::MaxSend(32))
    );
    assert_eq!(
        Device::new(DeviceConfig::new(0, 1), Store::new()).err(),
        Some(DeviceError::Link(ConfigError::ZeroSession))
    );
    assert!(DeviceError::MaxSend(32).to_string().contains("32 bytes"));
}

#[test]
fn a_reply_waits_for_a_free_slot_and_the_command_is_acknowledged_only_then() {
    let mut b = Bench::new(device(10));
    // The host's application is stalled: the device's four slots fill with readings.
    b.host_releases = false;
    b.run(100);
    assert_eq!(b.device.stats().readings, 4);
    assert!(!b.device.link().can_send());

    // `rate` needs no reply: acted on and acknowledged at once.
    b.host.send(b"rate 20").unwrap();
    b.run(20);
    assert_eq!(b.device.period_ms(), 20);
    assert_eq!(b.host.unacked(), 0);

    // `status` needs a slot: held, so not acknowledged, while none is free.
    b.host.send(b"status").unwrap();
    b.run(500);
    assert_eq!(b.host.unacked(), 1);
    assert_eq!(b.device.stats().commands_applied, 1);

    // The host catches up: the first free slot carries the reply, before any reading.
    b.host_releases = true;
    b.run(50);
    assert_eq!(b.host.unacked(), 0);
    assert_eq!(b.device.stats().commands_applied, 2);
    let status = b
        .got
        .iter()
        .position(|r| r[0] == r#"Str("status")"#)
        .unwrap();
    assert_eq!(
        status, 4,
        "the reply comes right after the four queued readings"
    );
    assert_eq!(
        b.got[status],
        [
            r#"Str("status")"#,
            "U32(20)",
            "Bool(false)",
            "U32(4)",
            "U32(0)"
        ]
    );
}

#[test]
fn bad_commands_get_error_replies_with_the_text_cut_short() {
    let mut b = Bench::new(device(1_000));
    let long = "x".repeat(100);
    for cmd in [
        &b"reboot"[..],
        b"rate soon",
        b"output \xffon",
        long.as_bytes(),
        b"  ",
    ] {
        b.host.send(cmd).unwrap();
    }
    b.run(100);
    assert_eq!(b.host.unacked(), 0);
    assert_eq!(b.device.stats().commands_rejected, 5);
    let cut = format!("Str({:?})", "x".repeat(ERROR_TEXT_MAX));
    let want: Vec<Vec<String>> = [
        ["Str(\"reboot\")", "Str(\"unknown command\")"],
        ["Str(\"rate soon\")", "Str(\"bad argument\")"],
        ["Str(\"output\")", "Str(\"not UTF-8\")"],
        [cut.as_str(), "Str(\"unknown command\")"],
        ["Str(\"\")", "Str(\"empty command\")"],
    ]
    .iter()
    .map(|[text, reason]| {
        vec![
            r#"Str("error")"#.to_string(),
            text.to_string(),
            reason.to_string(),
        ]
    })
    .collect();
    let got: Vec<Vec<String>> = b.replies().into_iter().cloned().collect();
    assert_eq!(got, want);
}

#[test]
fn a_silent_host_is_declared_dead_and_the_session_resumes_on_a_new_transport() {
    let mut b = Bench::new(device(100));
    b.run(1_000);
    let before = b.device.stats().readings;
    assert!(before >= 9);
    assert!(b.device.is_connected());

    // The host vanishes (its transport is gone, nothing arrives any more).
    b.pipe.cut();
    let t = b.now;
    let mut buf = [0u8; 512];
    while !b.device.needs_transport() && b.now < t + 10_000 {
        b.device.poll(b.t());
        while b.device.poll_transmit(b.t(), &mut buf).is_some() {}
        b.now += 10;
    }
    assert!(b.device.needs_transport(), "dead after dead_after_ms");
    assert_eq!(b.device.stats().peer_dead, 1);
    assert_eq!(b.device.link().phase(), Phase::Dead);
    // It kept sampling while disconnected, as far as its slots allow.
    assert!(b.device.stats().readings > before);

    // A new transport: the session resumes and nothing is lost or repeated.
    b.pipe.reconnect();
    b.device.transport_up(b.t()).unwrap();
    b.host.connect(b.t());
    b.run(2_000);
    assert_eq!(b.device.stats().resumes, 1);
    let counters: Vec<String> = b.got.iter().map(|r| r[0].clone()).collect();
    let want: Vec<String> = (0..b.device.stats().readings)
        .map(|k| format!("U32({k})"))
        .collect();
    assert_eq!(counters[..want.len() - 1], want[..want.len() - 1]);
}

#[test]
fn a_closed_session_does_not_reconnect() {
    let mut b = Bench::new(device(100));
    b.run(300);
    b.host.close();
    b.run(1_000);
    assert_eq!(b.device.link().phase(), Phase::Closed);
    assert!(!b.device.needs_transport());
    assert_eq!(b.device.transport_up(b.t()), Err(DeviceError::Closed));
    assert!(!b.device.link().can_send());
    assert_eq!(b.device.poll_timeout(), None, "nothing left to do");
}

/// Side A of a pipe as an `embedded-io` transport, the way a UART driver looks.
struct Uart<'a> {
    pipe: &'a mut FaultPipe<8192>,
}

impl embedded_io::ErrorType for Uart<'_> {
    type Error = Cut;
}

impl embedded_io::ReadReady for Uart<'_> {
    fn read_ready(&mut self) -> Result<bool, Cut> {
        Ok(self.pipe.is_cut() || self.pipe.pending(Side::A) > 0)
    }
}

impl embedded_io::Read for Uart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Cut> {
        self.pipe.pull(Side::A, buf)
    }
}

impl embedded_io::Write for Uart<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Cut> {
        self.pipe.push(Side::A, buf)
    }
    fn flush(&mut self) -> Result<(), Cut> {
        Ok(())
    }
}

#[test]
fn drive_runs_the_firmware_loop_over_embedded_io() {
    let mut device = device(10);
    let mut host = Link::new(Config::new(Role::Server, 0x57), HostStore::new()).unwrap();
    let mut pipe = FaultPipe::<8192>::new(FaultConfig {
        split: true,
        ..FaultConfig::clean(3)
    });
    let mut scratch = [0u8; 256];
    let mut buf = [0u8; 256];
    let t0 = Instant::from_millis(0);
    assert_eq!(
        device.drive(t0, &mut Uart { pipe: &mut pipe }, &mut scratch),
        Err(DriveError::NoTransport)
    );
    assert_eq!(
        device.drive(t0, &mut Uart { pipe: &mut pipe }, &mut scratch[..10]),
        Err(DriveError::NoTransport),
        "no transport is said first"
    );
    device.transport_up(t0).unwrap();
    assert_eq!(
        device.drive(t0, &mut Uart { pipe: &mut pipe }, &mut scratch[..10]),
        Err(DriveError::BufferTooSmall {
            need: device.link().transmit_len()
        })
    );
    host.connect(t0);
    host.send(b"output on").unwrap();
    let mut readings = 0;
    for ms in 0..1_000 {
        let t = Instant::from_millis(ms);
        device
            .drive(t, &mut Uart { pipe: &mut pipe }, &mut scratch)
            .unwrap();
        while let Ok(n @ 1..) = pipe.pull(Side::B, &mut buf) {
            host.handle_input(t, &buf[..n]);
        }
        host.handle_timeout(t);
        let n = host.received().count();
        readings += n;
        host.release(n);
        while let Some(n) = host.poll_transmit(t, &mut buf) {
            pipe.push(Side::B, &buf[..n]).unwrap();
        }
    }
    assert!(device.output());
    assert_eq!(host.unacked(), 0);
    assert!(readings >= 95, "{readings} readings in a second at 10 ms");

    // The line breaks: the driver says so and the device wants a new transport.
    pipe.cut();
    let t = Instant::from_millis(1_000);
    assert_eq!(
        device.drive(t, &mut Uart { pipe: &mut pipe }, &mut scratch),
        Err(DriveError::Io(Cut))
    );
    assert!(device.needs_transport());
}

//! `Device::drive_nb`, the firmware loop over a non-blocking UART through
//! `tether_core::io::nb`, as firmware-sim/qemu runs it: a transmit FIFO that takes a few
//! bytes at a time and is often full, reads of a few bytes, and a host that goes silent.

use tether_core::io::{nb, tx_buffer_len};
use tether_core::link::{Config, Instant, Link, LinkStorage, Role};
use tether_firmware_sim::device::{Device, DeviceConfig};
use tether_firmware_sim::fault::{Cut, FaultConfig, FaultPipe, Side};

type Store = LinkStorage<4, 4, 128>;
type HostStore = LinkStorage<16, 16, 128>;

/// The device's end of the pipe, as a UART with tiny FIFOs: `write_ready` says no every
/// third call, a write takes at most 3 bytes, a read gives at most 5.
struct Uart<'a> {
    pipe: &'a mut FaultPipe<8192>,
    calls: u32,
}

impl embedded_io::ErrorType for Uart<'_> {
    type Error = Cut;
}

impl embedded_io::ReadReady for Uart<'_> {
    fn read_ready(&mut self) -> Result<bool, Cut> {
        Ok(self.pipe.pending(Side::A) > 0)
    }
}

impl embedded_io::Read for Uart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Cut> {
        let n = buf.len().min(5);
        self.pipe.pull(Side::A, &mut buf[..n])
    }
}

impl embedded_io::WriteReady for Uart<'_> {
    fn write_ready(&mut self) -> Result<bool, Cut> {
        self.calls += 1;
        Ok(self.calls % 3 != 0)
    }
}

impl embedded_io::Write for Uart<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Cut> {
        let n = buf.len().min(3);
        self.pipe.push(Side::A, &buf[..n])
    }
    fn flush(&mut self) -> Result<(), Cut> {
        Ok(())
    }
}

/// Runs device and host for `ms` virtual milliseconds from `from`; the host releases what
/// it gets (its counters, in order) unless `host_silent`. Returns the readings' counters.
fn run(
    device: &mut Device<Store>,
    driver: &mut nb::Driver<[u8; tx_buffer_len(128, 1)]>,
    host: &mut Link<HostStore>,
    pipe: &mut FaultPipe<8192>,
    from: u64,
    ms: u64,
    host_silent: bool,
) -> Vec<u32> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let mut uart = Uart { pipe, calls: 0 };
    for ms in from..from + ms {
        let t = Instant::from_millis(ms);
        if device.needs_transport() {
            driver.reset();
            device.transport_up(t).unwrap();
        }
        // As the firmware does: again while there is progress (bounded).
        for _ in 0..8 {
            let p = device.drive_nb(t, &mut uart, driver).unwrap();
            if p.is_idle() {
                break;
            }
        }
        while let Ok(n @ 1..) = uart.pipe.pull(Side::B, &mut buf) {
            if !host_silent {
                host.handle_input(t, &buf[..n]);
            }
        }
        if host_silent {
            continue;
        }
        host.handle_timeout(t);
        for r in host.received() {
            let f = tether_core::record::Fields::new(r.payload).unwrap();
            if let Some(Ok(tether_core::record::Field::U32(c))) = f.into_iter().next() {
                got.push(c);
            }
        }
        let n = host.received().count();
        host.release(n);
        while let Some(n) = host.poll_transmit(t, &mut buf) {
            uart.pipe.push(Side::B, &buf[..n]).unwrap();
        }
    }
    got
}

#[test]
fn drive_nb_streams_over_a_uart_that_takes_a_few_bytes_at_a_time_and_resumes_after_silence() {
    let mut config = DeviceConfig::new(0xD1, 1);
    config.period_ms = 5;
    config.record_limit = Some(300);
    config.link.keepalive_ms = 200;
    config.link.dead_after_ms = 500;
    let mut device = Device::new(config, Store::new()).unwrap();
    let mut driver = nb::Driver::new([0u8; tx_buffer_len(128, 1)]);
    let mut host = Link::new(Config::new(Role::Server, 0x57), HostStore::new()).unwrap();
    let mut pipe = FaultPipe::<8192>::new(FaultConfig::clean(7));
    host.connect(Instant::from_millis(0));
    host.send(b"output on").unwrap();

    let mut got = run(
        &mut device,
        &mut driver,
        &mut host,
        &mut pipe,
        0,
        600,
        false,
    );
    assert!(device.output(), "the command was acted on");
    assert!(got.len() >= 100, "{} readings in 600 ms at 5 ms", got.len());

    // The host's end goes silent (its bridge hung up): the device notices after
    // dead_after_ms and connects again over the same wires; the host takes the HELLO on a
    // fresh connection, and the session resumes.
    got.extend(run(
        &mut device,
        &mut driver,
        &mut host,
        &mut pipe,
        600,
        800,
        true,
    ));
    assert!(device.stats().peer_dead >= 1);
    while pipe.pull(Side::B, &mut [0u8; 256]).is_ok_and(|n| n > 0) {}
    host.connect(Instant::from_millis(1_400));
    got.extend(run(
        &mut device,
        &mut driver,
        &mut host,
        &mut pipe,
        1_400,
        3_000,
        false,
    ));

    assert_eq!(
        got,
        (0..300).collect::<Vec<u32>>(),
        "every reading once, in order"
    );
    assert_eq!(host.unacked(), 0, "the command was acknowledged");
    assert!(device.stats().resumes >= 1);
    assert!(device.stats().transports >= 2, "{:?}", device.stats());
}

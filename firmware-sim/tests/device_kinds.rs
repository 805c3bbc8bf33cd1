//! The device model with `declare_kinds`: its first records declare its kinds, and every
//! reading and reply after them is a record of its kind that a host reads with the
//! declarations alone (`PROTOCOL.md` 10.5 to 10.7).

use std::collections::HashMap;

use tether_core::link::{Config, Instant, Link, LinkStorage, Role};
use tether_core::record::kind::Declaration;
use tether_core::record::{Field, Record};
use tether_firmware_sim::device::{Device, DeviceConfig, Sensor, ENV, ERROR, STATUS};

type Store = LinkStorage<4, 4, 128>;

/// Runs a declaring device against a host link for `ms` virtual milliseconds, the host
/// sending `commands` at the start; returns every record the host received, in order.
fn run(ms: u64, commands: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut cfg = DeviceConfig::new(0xD1, 9);
    cfg.period_ms = 10;
    cfg.declare_kinds = true;
    let mut device = Device::new(cfg, Store::new()).unwrap();
    let mut host = Link::new(
        Config::new(Role::Server, 0x57),
        LinkStorage::<8, 8, 128>::new(),
    )
    .unwrap();
    let t = Instant::from_millis(0);
    device.transport_up(t).unwrap();
    host.connect(t);
    for c in commands {
        host.send(c).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    for now in 0..ms {
        let t = Instant::from_millis(now);
        device.poll(t);
        host.handle_timeout(t);
        while let Some(n) = device.poll_transmit(t, &mut buf) {
            host.handle_input(t, &buf[..n]);
        }
        while let Some(n) = host.poll_transmit(t, &mut buf) {
            device.handle_input(t, &buf[..n]);
        }
        let records: Vec<Vec<u8>> = host.received().map(|r| r.payload.to_vec()).collect();
        host.release(records.len());
        got.extend(records);
    }
    assert_eq!(
        device.stats().records() as usize,
        got.len() + device.link().unacked() as usize
    );
    got
}

#[test]
fn a_declaring_device_declares_first_then_sends_records_of_its_kinds() {
    let got = run(200, &[b"status", b"reboot"]);
    let mut kinds: HashMap<u8, Declaration<'_>> = HashMap::new();
    for r in &got[..3] {
        let Record::Declaration(Ok(d)) = Record::parse(r) else {
            panic!("a declaration first: {r:02x?}");
        };
        kinds.insert(d.id(), d);
    }
    for (k, want) in [ENV, STATUS, ERROR].iter().enumerate() {
        let d = &kinds[&(k as u8)];
        assert_eq!(d.name(), want.name);
        assert_eq!(d.fields().collect::<Vec<_>>(), want.fields);
    }
    let mut sensor = Sensor::new(9);
    let (mut readings, mut status, mut errors) = (0u32, 0, 0);
    for r in &got[3..] {
        let Record::Kind { id, record } = Record::parse(r) else {
            panic!("a record of a kind: {r:02x?}");
        };
        let values: Vec<Field<'_>> = kinds[&id].values(record).collect::<Result<_, _>>().unwrap();
        match id {
            0 => {
                let s = sensor.sample();
                assert_eq!(values[0], Field::U32(readings));
                assert_eq!(values[2], Field::F32(s.temperature));
                assert_eq!(values[3], Field::U16(s.pressure));
                readings += 1;
            }
            1 => {
                assert_eq!(values[..2], [Field::U32(10), Field::Bool(false)]);
                status += 1;
            }
            _ => {
                assert_eq!(
                    values,
                    [Field::Str("reboot"), Field::Str("unknown command")]
                );
                errors += 1;
            }
        }
    }
    assert!(readings >= 10, "{readings} readings");
    assert_eq!((status, errors), (1, 1));
}

#[test]
fn the_declarations_fit_the_smallest_record_any_link_takes() {
    // 66 bytes is the smallest max_payload (PROTOCOL.md 9.3); the device's records are at
    // most 64.
    for k in [ENV, STATUS, ERROR] {
        assert!(
            k.declaration_len() <= 64,
            "{}: {}",
            k.name,
            k.declaration_len()
        );
    }
    assert_eq!(ENV.declaration_len(), 64);
}

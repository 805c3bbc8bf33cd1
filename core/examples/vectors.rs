//! Prints the frame-layer test vectors of `PROTOCOL.md` from this implementation.
//!
//! `cargo run -p tether-core --example vectors` regenerates them; the test
//! `core/tests/protocol_vectors.rs` checks the code against the copy in `PROTOCOL.md`, and
//! `tests/interop/frame_ref.py` (written from the spec alone) checks the spec against itself.

use tether_core::frame::{self, Flags, FrameView, Header, Kind, OVERHEAD};

fn hex(bytes: &[u8]) -> String {
    let words: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // 32 bytes a line keeps long vectors readable.
    words
        .chunks(32)
        .map(|c| c.join(" "))
        .collect::<Vec<_>>()
        .join("\n         ")
}

fn cobs(raw: &[u8]) -> Vec<u8> {
    // Re-encode a raw frame through the public API: parse its header, re-emit.
    let view = FrameView::new_checked(raw).ok();
    match view.and_then(|v| Header::parse(&v).ok().map(|h| (h, v.payload().to_vec()))) {
        Some((h, p)) => wire(&h, &p),
        None => manual_cobs(raw),
    }
}

/// COBS by the book, for the invalid vectors the encoder refuses to produce.
fn manual_cobs(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut code_at = 0;
    let mut code = 1u8;
    for &b in raw {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out.push(0);
    out
}

fn wire(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; frame::max_encoded_len(payload.len())];
    let n = frame::encode(h, payload, &mut out).expect("encodes");
    out.truncate(n);
    out
}

fn raw(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut raw = vec![0u8; OVERHEAD + payload.len()];
    let mut view = FrameView::new_unchecked(&mut raw[..]);
    h.emit(&mut view).expect("fits");
    view.payload_mut().copy_from_slice(payload);
    view.fill_crc();
    raw
}

fn valid(name: &str, h: Header, payload: &[u8]) {
    valid_with(name, h, payload, None, None);
}

/// A valid vector decoded with receiver limit `max`, and optionally with a non-canonical
/// `wire` that only decoding is checked against.
fn valid_with(
    name: &str,
    h: Header,
    payload: &[u8],
    max: Option<usize>,
    wire_override: Option<&[u8]>,
) {
    let raw = raw(&h, payload);
    println!("```tether-vector");
    println!("name:    {name}");
    if let Some(m) = max {
        println!("max:     {m}");
    }
    if wire_override.is_some() {
        println!("decode-only: yes");
    }
    println!("kind:    0x{:02x}", h.kind as u8);
    println!("flags:   0x{:02x}", h.flags.bits());
    println!("seq:     0x{:08x}", h.seq);
    println!("ack:     0x{:08x}", h.ack);
    println!("credit:  0x{:04x}", h.credit);
    println!(
        "payload: {}",
        if payload.is_empty() {
            "(empty)".into()
        } else {
            hex(payload)
        }
    );
    println!(
        "crc:     0x{:08x}",
        u32::from_le_bytes(raw[raw.len() - 4..].try_into().unwrap())
    );
    println!("raw:     {}", hex(&raw));
    let canonical = wire(&h, payload);
    println!("wire:    {}", hex(wire_override.unwrap_or(&canonical)));
    println!("```\n");
}

fn invalid(name: &str, error: &str, wire: &[u8]) {
    invalid_with(name, error, wire, None);
}

fn invalid_with(name: &str, error: &str, wire: &[u8], max: Option<usize>) {
    println!("```tether-vector");
    println!("name:    {name}");
    if let Some(m) = max {
        println!("max:     {m}");
    }
    println!("error:   {error}");
    println!("wire:    {}", hex(wire));
    println!("```\n");
}

fn main() {
    let ping = Header {
        kind: Kind::Ping,
        ..Header::default()
    };
    valid("ping-empty", ping, b"");
    let data = Header {
        kind: Kind::Data,
        flags: Flags::ACK,
        seq: 0x0000_0001,
        ack: 0x1234_5678,
        credit: 4,
    };
    valid("data-16", data, b"tether record 01");
    // Decoded with M equal to its raw length: a frame of exactly M bytes is accepted.
    let zeros = [0x00, 0x11, 0x00, 0x00, 0x22, 0x00];
    let m = Some(OVERHEAD + zeros.len());
    valid_with("data-zeros", Header { seq: 2, ..data }, &zeros, m, None);
    let dense = Header {
        kind: Kind::Data,
        flags: Flags::ACK,
        seq: 0x1122_3344,
        ack: 0x5566_7788,
        credit: 0x99aa,
    };
    let long: Vec<u8> = (0..260).map(|i| (i % 255 + 1) as u8).collect();
    valid("data-full-block", dense, &long);
    // A raw frame of exactly two full COBS blocks (508 non-zero bytes): the canonical
    // encoding ends with the code byte 0x01. The sequence number is the first one from
    // 0x11223344 up whose CRC has no zero byte.
    let two: Vec<u8> = (0..490).map(|i| (i % 255 + 1) as u8).collect();
    let exact = (0x1122_3344u32..)
        .map(|seq| Header { seq, ..dense })
        .find(|h| !raw(h, &two).contains(&0))
        .expect("some sequence number works");
    valid("data-two-full-blocks", exact, &two);
    // The same frame without the canonical final 0x01: receivers accept it too.
    let mut short_form = wire(&exact, &two);
    short_form.remove(short_form.len() - 2);
    valid_with(
        "data-two-full-blocks-without-final-01",
        exact,
        &two,
        None,
        Some(&short_form),
    );

    // Invalid frames. Each is COBS-correct unless the name says otherwise.
    let good = raw(&data, b"tether record 01");
    let mut bad_crc = good.clone();
    bad_crc[14] ^= 0x01; // payload 't' -> 'u', CRC left as it was
    invalid("bad-crc", "crc", &manual_cobs(&bad_crc));
    let mut truncated = cobs(&good);
    truncated.truncate(10);
    truncated.push(0);
    invalid("cobs-truncated", "cobs", &truncated);
    let mut unknown = good.clone();
    unknown[0] = 0x08;
    refill(&mut unknown);
    invalid("unknown-kind", "unknown-kind", &manual_cobs(&unknown));
    let mut flags = good.clone();
    flags[1] = 0x81;
    refill(&mut flags);
    invalid("reserved-flags", "reserved-flags", &manual_cobs(&flags));
    let mut len = good.clone();
    len[12] = 15;
    refill(&mut len);
    invalid("length-mismatch", "length-mismatch", &manual_cobs(&len));
    invalid(
        "too-short",
        "too-short",
        &manual_cobs(&good[..OVERHEAD - 1]),
    );
    invalid("empty-raw-frame", "too-short", &[0x01, 0x00]);
    // data-16 is 34 raw bytes; a receiver with M = 33 drops it.
    invalid_with("too-long", "too-long", &cobs(&good), Some(good.len() - 1));
}

fn refill(raw: &mut [u8]) {
    FrameView::new_unchecked(raw).fill_crc();
}

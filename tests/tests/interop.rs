//! Tether's frame layer and records against a second, independent implementation of
//! PROTOCOL.md (`tests/interop/frame_ref.py`, Python, written from the spec alone).
//!
//! Beyond the spec's vectors, the two implementations exchange seeded random streams in
//! both directions — frames of every kind and size, garbage, corrupted and oversized frames
//! — and must agree on every frame delivered and every frame dropped, and why; and they read
//! the same seeded random records (section 10), well-formed and damaged, field for field.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tether_core::frame::{self, Decoder, Flags, FrameError, Header, HeaderError, Kind};
use tether_core::record::{Field, FieldError, Fields, RecordWriter};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs the reference implementation with `args`, feeding `stdin`; returns its stdout.
fn python(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let script = repo().join("tests/interop/frame_ref.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/setup.sh installs it)");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().expect("python3 ends");
    writer.join().expect("writer").expect("stdin written");
    assert!(
        out.status.success(),
        "frame_ref.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_frame(rng: &mut Rng, max_payload: u64) -> (Header, Vec<u8>) {
    let kind = Kind::ALL[rng.below(Kind::ALL.len() as u64) as usize];
    let header = Header {
        kind,
        flags: if rng.below(2) == 0 {
            Flags::NONE
        } else {
            Flags::ACK
        },
        seq: rng.next() as u32,
        ack: rng.next() as u32,
        credit: rng.next() as u16,
    };
    let len = rng.below(max_payload + 1) as usize;
    // Zero-heavy payloads half the time: COBS has its edges there.
    let zeros = rng.below(2) == 0;
    let payload = (0..len)
        .map(|_| {
            if zeros && rng.below(3) == 0 {
                0
            } else {
                rng.next() as u8
            }
        })
        .collect();
    (header, payload)
}

fn line(h: &Header, payload: &[u8]) -> String {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{} {} {} {} {} {hex}",
        h.kind as u8,
        h.flags.bits(),
        h.seq,
        h.ack,
        h.credit
    )
}

fn reason(e: &FrameError) -> &'static str {
    match e {
        FrameError::TooLong => "too-long",
        FrameError::Cobs => "cobs",
        FrameError::Crc { .. } => "crc",
        FrameError::Header(HeaderError::TooShort { .. }) => "too-short",
        FrameError::Header(HeaderError::UnknownKind(_)) => "unknown-kind",
        FrameError::Header(HeaderError::ReservedFlags(_)) => "reserved-flags",
        FrameError::Header(HeaderError::LengthMismatch { .. }) => "length-mismatch",
        _ => "unexpected",
    }
}

/// The Rust decoder's account of `wire`, in the reference implementation's output format.
fn rust_decode(wire: &[u8], max_raw: usize) -> String {
    let mut dec = Decoder::new(vec![0u8; max_raw]);
    let mut out = String::new();
    let mut input = wire;
    while let Some(r) = dec.decode(&mut input) {
        match r {
            Ok(f) => out += &format!("frame {}\n", line(&f.header, f.payload)),
            Err(e) => out += &format!("drop {}\n", reason(&e)),
        }
    }
    out
}

fn encode(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; frame::max_encoded_len(payload.len())];
    let n = frame::encode(h, payload, &mut out).expect("encodes");
    out.truncate(n);
    out
}

#[test]
fn reference_implementation_passes_the_spec_vectors() {
    let spec = repo().join("PROTOCOL.md");
    let out = String::from_utf8(python(&[spec.to_str().expect("utf-8 path")], b"")).unwrap();
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        out.lines().filter(|l| l.starts_with("ok record ")).count() >= 10,
        "the record vectors of section 10 are checked too: {out}"
    );
}

/// The second implementation of protocol version 2's frames (`tests/interop/frame_v2_ref.py`,
/// written from PROTOCOL.md section 11) passes the spec's version 2 vectors, which
/// `core/tests/protocol_vectors.rs` checks against the reference, and round-trips 2,000
/// random frames of every kind and shape.
#[test]
fn the_second_implementation_of_version_2_frames_passes_the_spec_vectors() {
    let script = repo().join("tests/interop/frame_v2_ref.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(repo().join("PROTOCOL.md"))
        .output()
        .expect("python3 runs (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("v2 vectors, 2000 random frames: ok"),
        "{text}"
    );
}

#[test]
fn python_decodes_what_rust_encodes_including_damaged_streams() {
    for seed in 1..=4u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let max_raw = frame::raw_len(600);
        let mut wire = Vec::new();
        for _ in 0..150 {
            let (h, p) = random_frame(&mut rng, 700); // some exceed the limit
            let mut f = encode(&h, &p);
            match rng.below(10) {
                0 => {
                    let bit = rng.below(f.len() as u64 * 8) as usize;
                    f[bit / 8] ^= 1 << (bit % 8);
                }
                1 => {
                    let cut = rng.below(f.len() as u64) as usize;
                    f.truncate(cut);
                }
                2 => wire.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                _ => {}
            }
            wire.extend(f);
        }
        wire.push(0); // end whatever the last damage left open
        let theirs = String::from_utf8(python(&["decode", &max_raw.to_string()], &wire)).unwrap();
        let ours = rust_decode(&wire, max_raw);
        assert!(ours.lines().filter(|l| l.starts_with("frame")).count() >= 60);
        assert!(ours.lines().any(|l| l.starts_with("drop")));
        assert_eq!(ours, theirs, "seed {seed}: the implementations disagree");
    }
}

#[test]
fn rust_decodes_what_python_encodes_byte_for_byte() {
    let mut rng = Rng(0x00DE_C0DE);
    let frames: Vec<(Header, Vec<u8>)> = (0..300)
        .map(|i| random_frame(&mut rng, if i % 50 == 0 { 2000 } else { 300 }))
        .collect();
    let lines: String = frames.iter().map(|(h, p)| line(h, p) + "\n").collect();
    let theirs = python(&["encode"], lines.as_bytes());
    let ours: Vec<u8> = frames.iter().flat_map(|(h, p)| encode(h, p)).collect();
    assert_eq!(theirs, ours, "both encoders are canonical");
    let decoded = rust_decode(&theirs, frame::raw_len(2000));
    let want: String = frames
        .iter()
        .map(|(h, p)| format!("frame {}\n", line(h, p)))
        .collect();
    assert_eq!(decoded, want);
}

/// A seeded random record: typed ones written field by field (then, one time in three,
/// damaged: cut short, a byte changed, or bytes appended), or arbitrary bytes.
fn random_record(rng: &mut Rng) -> Vec<u8> {
    if rng.below(5) == 0 {
        return (0..rng.below(12)).map(|_| rng.next() as u8).collect();
    }
    let mut buf = vec![0u8; 4096];
    let mut w = RecordWriter::new(&mut buf);
    for _ in 0..rng.below(8) {
        let x = rng.next();
        let text = ["", "ok", "°C", "a,b \"q\"", "\u{1F600}"][rng.below(5) as usize];
        let bytes: Vec<u8> = (0..rng.below(6)).map(|_| rng.next() as u8).collect();
        let _ = match rng.below(13) {
            0 => w.bool(x & 1 == 1),
            1 => w.u8(x as u8),
            2 => w.u16(x as u16),
            3 => w.u32(x as u32),
            4 => w.u64(x),
            5 => w.i8(x as i8),
            6 => w.i16(x as i16),
            7 => w.i32(x as i32),
            8 => w.i64(x as i64),
            9 => w.f32(f32::from_bits(x as u32)),
            10 => w.f64(f64::from_bits(x)),
            11 => w.str(text),
            _ => w.bytes(&bytes),
        };
    }
    let mut r = w.finish().to_vec();
    match rng.below(3) {
        0 if r.len() > 1 => r.truncate(1 + rng.below(r.len() as u64 - 1) as usize),
        1 if r.len() > 1 => {
            // Small values half the time: tags, bools and lengths have their edges there.
            let i = 1 + rng.below(r.len() as u64 - 1) as usize;
            r[i] = if rng.below(2) == 0 {
                rng.below(16) as u8
            } else {
                rng.next() as u8
            };
        }
        2 => r.extend((0..rng.below(4)).map(|_| rng.next() as u8)),
        _ => {}
    }
    r
}

/// The Rust reader's account of `record`, in the reference implementation's format.
fn rust_record(record: &[u8]) -> String {
    let Some(fields) = Fields::new(record) else {
        return "text".into();
    };
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut out = String::from("typed");
    for f in fields {
        out += &match f {
            Ok(Field::Bool(v)) => format!(" bool:{v}"),
            Ok(Field::U8(v)) => format!(" u8:{v}"),
            Ok(Field::U16(v)) => format!(" u16:{v}"),
            Ok(Field::U32(v)) => format!(" u32:{v}"),
            Ok(Field::U64(v)) => format!(" u64:{v}"),
            Ok(Field::I8(v)) => format!(" i8:{v}"),
            Ok(Field::I16(v)) => format!(" i16:{v}"),
            Ok(Field::I32(v)) => format!(" i32:{v}"),
            Ok(Field::I64(v)) => format!(" i64:{v}"),
            Ok(Field::F32(v)) => format!(" f32:{}", v.to_bits()),
            Ok(Field::F64(v)) => format!(" f64:{}", v.to_bits()),
            Ok(Field::Str(v)) => format!(" str:{}", hex(v.as_bytes())),
            Ok(Field::Bytes(v)) => format!(" bytes:{}", hex(v)),
            Err(FieldError::UnknownTag { at, .. }) => format!(" ! unknown-tag {at}"),
            Err(FieldError::Truncated { at }) => format!(" ! truncated {at}"),
            Err(FieldError::Invalid { at }) => format!(" ! invalid {at}"),
        };
    }
    out
}

#[test]
fn python_reads_random_records_as_rust_does() {
    let mut rng = Rng(0x1E1E_1E1E);
    let records: Vec<Vec<u8>> = (0..2000).map(|_| random_record(&mut rng)).collect();
    let input: String = records
        .iter()
        .map(|r| r.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    let theirs = String::from_utf8(python(&["records"], input.as_bytes())).unwrap();
    let ours: Vec<String> = records.iter().map(|r| rust_record(r)).collect();
    for reason in ["unknown-tag", "truncated", "invalid"] {
        assert!(
            ours.iter().any(|l| l.contains(reason)),
            "the records include a {reason} one"
        );
    }
    assert!(
        ours.iter()
            .filter(|l| !l.contains('!') && l.starts_with("typed"))
            .count()
            > 300
    );
    for (i, (o, t)) in ours.iter().zip(theirs.lines()).enumerate() {
        assert_eq!(
            o, t,
            "record {i} ({:02x?}): the implementations disagree",
            records[i]
        );
    }
    assert_eq!(theirs.lines().count(), records.len());
}

//! `tether encode` and `tether decode`: single frames written and dissected.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use tether_core::frame::{self, Decoder, DecoderStats, Flags, Header, Kind};

use super::CliError;

#[derive(Debug, clap::Args)]
pub(super) struct EncodeArgs {
    /// Frame kind.
    #[arg(long, value_enum, default_value_t = KindArg::Data)]
    kind: KindArg,
    /// Sequence number.
    #[arg(long, default_value_t = 0)]
    seq: u32,
    /// Acknowledgement number; setting it (or --credit) sets the ACK flag.
    #[arg(long)]
    ack: Option<u32>,
    /// Credit granted to the peer; setting it (or --ack) sets the ACK flag.
    #[arg(long)]
    credit: Option<u16>,
    /// The payload as text, instead of reading it from standard input.
    #[arg(long)]
    payload: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct DecodeArgs {
    /// The captured stream; standard input if absent or "-".
    input: Option<PathBuf>,
    /// The largest payload to accept; longer frames are dropped as too long.
    #[arg(long, default_value_t = u16::MAX)]
    max_payload: u16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Hello,
    Welcome,
    Reject,
    Data,
    Ack,
    Ping,
    Close,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::Hello => Kind::Hello,
            KindArg::Welcome => Kind::Welcome,
            KindArg::Reject => Kind::Reject,
            KindArg::Data => Kind::Data,
            KindArg::Ack => Kind::Ack,
            KindArg::Ping => Kind::Ping,
            KindArg::Close => Kind::Close,
        }
    }
}

pub(super) fn encode(args: EncodeArgs) -> Result<(), CliError> {
    let payload = match args.payload {
        Some(text) => text.into_bytes(),
        None => {
            let mut buf = Vec::new();
            io::stdin()
                .read_to_end(&mut buf)
                .map_err(|source| CliError::Read {
                    what: "standard input".into(),
                    source,
                })?;
            buf
        }
    };
    let with_ack = args.ack.is_some() || args.credit.is_some();
    let header = Header {
        kind: args.kind.into(),
        flags: if with_ack { Flags::ACK } else { Flags::NONE },
        seq: args.seq,
        ack: args.ack.unwrap_or(0),
        credit: args.credit.unwrap_or(0),
    };
    let mut out = vec![0u8; frame::max_encoded_len(payload.len())];
    let n = frame::encode(&header, &payload, &mut out)?;
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&out[..n])
        .and_then(|()| stdout.flush())
        .map_err(CliError::Write)
}

pub(super) fn decode(args: DecodeArgs) -> Result<ExitCode, CliError> {
    let (what, mut reader): (String, Box<dyn Read>) = match &args.input {
        Some(p) if p.as_os_str() != "-" => {
            let file = File::open(p).map_err(|source| CliError::Read {
                what: p.display().to_string(),
                source,
            })?;
            (p.display().to_string(), Box::new(file))
        }
        _ => ("standard input".into(), Box::new(io::stdin().lock())),
    };
    let mut decoder = Decoder::new(vec![0u8; frame::raw_len(usize::from(args.max_payload))]);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(CliError::Read { what, source }),
        };
        let mut input = &chunk[..n];
        while let Some(result) = decoder.decode(&mut input) {
            let line = match result {
                Ok(f) => describe(&f.header, f.payload),
                Err(e) => format!("dropped: {e}"),
            };
            writeln!(out, "{line}").map_err(CliError::Write)?;
        }
    }
    out.flush().map_err(CliError::Write)?;
    let stats = decoder.stats();
    eprintln!("{}", summary(&stats));
    let clean = stats.dropped() == 0 && !decoder.in_frame();
    if decoder.in_frame() {
        eprintln!("tether: the stream ended inside a frame (no closing 0x00)");
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line for a good frame: header fields, then the payload with non-printable bytes
/// escaped.
fn describe(h: &Header, payload: &[u8]) -> String {
    let kind = format!("{:?}", h.kind).to_uppercase();
    let ack = if h.flags.contains(Flags::ACK) {
        format!(" ack={} credit={}", h.ack, h.credit)
    } else {
        String::new()
    };
    format!(
        "{kind} seq={}{ack} len={} payload=\"{}\"",
        h.seq,
        payload.len(),
        payload.escape_ascii()
    )
}

fn summary(s: &DecoderStats) -> String {
    format!(
        "{} bytes, {} frames, {} dropped (too long {}, COBS {}, CRC {}, header {})",
        s.bytes,
        s.frames,
        s.dropped(),
        s.too_long,
        s.cobs_errors,
        s.crc_errors,
        s.header_errors
    )
}

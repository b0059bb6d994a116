//! The blocking stage: decompress, hash the output, cut it into upload parts.

use std::io::Read;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::pipeline::budget::MemoryBudget;
use crate::pipeline::hash::WithSha256;
use crate::pipeline::upload::Part;
use labctl_core::checksum::{Algorithm, Checksum};
use labctl_core::manifest::Compression;

#[derive(Debug)]
pub enum DecodeError {
    Corrupt {
        format: &'static str,
        message: String,
    },
    UploadStopped,
}

/// Reads the downloaded chunks as a `std::io::Read`, blocking the (blocking-pool) thread.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(())) => return Err(std::io::Error::other("the download was interrupted")),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// The most memory xz decoding may take. `xz -9e` (a 64 MiB dictionary) needs ~65 MiB; a file
/// that declares more was not made for decoding on a small runner, or was made to exhaust it.
pub const XZ_MEMORY_LIMIT: u64 = 256 * 1024 * 1024;

/// What xz decoding on two threads may take: a file compressed in blocks (`xz -T`) is decoded
/// on two threads within it, else on one.
const XZ_THREADING: u64 = 48 * 1024 * 1024;

/// xz decoding on up to two threads for multi-block files, within `threading` bytes (the window
/// held for it): past that liblzma falls back to one thread; past [`XZ_MEMORY_LIMIT`] it stops.
fn xz_stream(threading: u64) -> std::io::Result<liblzma::stream::Stream> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2) as u32;
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(threading)
        .memlimit_stop(XZ_MEMORY_LIMIT)
        .decoder()
        .map_err(std::io::Error::other)
}

/// How many leading bytes tell the formats apart.
const SNIFF_BYTES: usize = 6;
/// How many leading bytes are read to learn the decoder's window: an xz stream header and its
/// first block header (12 and usually 12–24 bytes), a zstd frame header (at most 18).
const HEADER_BYTES: usize = 64;
/// Beyond the window itself, what a decoder holds (buffers, tables).
const DECODER_OVERHEAD: u64 = 1024 * 1024;

/// The largest window zstd decodes by default (`ZSTD_WINDOWLOG_LIMIT_DEFAULT`, 2^27).
const ZSTD_WINDOW_LIMIT: u64 = 128 * 1024 * 1024;

/// The memory a decoder of `format` needs for the stream starting with `header`: its window
/// (an xz dictionary, a zstd window) and buffers. What the header does not tell is taken at the
/// largest a usual file has: 64 MiB for xz (`-9`), 8 MiB for zstd. A window the decoder would
/// refuse is refused here, before anything waits for room for it.
pub fn window_of(format: Compression, header: &[u8]) -> Result<u64, String> {
    let window = match format {
        Compression::Gzip => 32 * 1024,
        Compression::Zstd => {
            let window = zstd_window(header).unwrap_or(8 << 20);
            if window > ZSTD_WINDOW_LIMIT {
                return Err(format!(
                    "its frame declares a window of {} MiB, more than the {} MiB zstd decodes; refused",
                    window >> 20,
                    ZSTD_WINDOW_LIMIT >> 20
                ));
            }
            window
        }
        Compression::Xz => {
            let (dict, threaded) = xz_dictionary(header).unwrap_or((64 << 20, false));
            if dict + DECODER_OVERHEAD > XZ_MEMORY_LIMIT {
                return Err(over_the_xz_limit());
            }
            // Compressed in blocks, which carry their sizes: two threads may decode it.
            if threaded {
                return Ok((dict + DECODER_OVERHEAD).max(XZ_THREADING));
            }
            dict
        }
    };
    Ok(window + DECODER_OVERHEAD)
}

fn over_the_xz_limit() -> String {
    format!(
        "decoding it would take more than {} MiB of memory (its dictionary is larger than any xz preset uses); refused",
        XZ_MEMORY_LIMIT >> 20
    )
}

/// The LZMA2 dictionary size of the first block, and whether the block header carries sizes
/// (what multi-threaded encoders write). xz file format 1.2.1, §3.1.
fn xz_dictionary(header: &[u8]) -> Option<(u64, bool)> {
    let block = header.get(12..)?;
    let size = (usize::from(*block.first()?) + 1) * 4;
    let block = block.get(..size)?;
    let flags = block[1];
    let mut at = 2;
    let varint = |at: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        for i in 0..9 {
            let byte = *block.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    };
    let sized = flags & 0xC0 != 0;
    if flags & 0x40 != 0 {
        varint(&mut at)?;
    }
    if flags & 0x80 != 0 {
        varint(&mut at)?;
    }
    for _ in 0..=(flags & 0x03) {
        let id = varint(&mut at)?;
        let props = usize::try_from(varint(&mut at)?).ok()?;
        if id == 0x21 && props == 1 {
            let bits = u32::from(*block.get(at)?);
            if bits > 40 {
                return None;
            }
            let dict = if bits == 40 {
                u64::from(u32::MAX)
            } else {
                u64::from(2 | (bits & 1)) << (bits / 2 + 11)
            };
            return Some((dict, sized));
        }
        at += props;
    }
    None
}

/// The window of the first zstd frame (RFC 8878, §3.1.1.1): its window descriptor, or for a
/// single-segment frame its content size.
fn zstd_window(header: &[u8]) -> Option<u64> {
    if !header.starts_with(b"\x28\xB5\x2F\xFD") {
        return None;
    }
    let descriptor = *header.get(4)?;
    if descriptor & 0x20 == 0 {
        let window = *header.get(5)?;
        let base = 1u64 << (10 + u32::from(window >> 3));
        return Some(base + (base / 8) * u64::from(window & 7));
    }
    let dictionary_id = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let at = 5 + dictionary_id;
    let size = [1, 2, 4, 8][usize::from(descriptor >> 6)];
    let bytes = header.get(at..at + size)?;
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        value |= u64::from(*b) << (8 * i);
    }
    Some(if size == 2 { value + 256 } else { value })
}

/// Whether `prefix` starts the way every `format` file does.
fn has_magic(format: Compression, prefix: &[u8]) -> bool {
    match format {
        Compression::Xz => prefix.starts_with(b"\xFD7zXZ\x00"),
        Compression::Gzip => prefix.starts_with(b"\x1F\x8B"),
        // A frame, or a skippable frame (0x184D2A50..=0x184D2A5F, little-endian).
        Compression::Zstd => {
            prefix.starts_with(b"\x28\xB5\x2F\xFD")
                || (prefix.len() >= 4
                    && prefix[0] & 0xF0 == 0x50
                    && prefix[1..4] == *b"\x2A\x4D\x18")
        }
    }
}

/// What the first bytes say the data is instead, for an error that names the real format.
pub fn describe(prefix: &[u8]) -> String {
    if let Some(actual) = [Compression::Xz, Compression::Gzip, Compression::Zstd]
        .into_iter()
        .find(|&f| has_magic(f, prefix))
    {
        return format!("it is {} data", actual.name());
    }
    let known: [(&[u8], &str); 4] = [
        (b"BZh", "bzip2 data"),
        (b"PK\x03\x04", "a zip archive"),
        (b"QFI\xFB", "a qcow2 image"),
        (b"<", "text starting with `<` (an HTML error page?)"),
    ];
    if let Some((_, what)) = known.iter().find(|(m, _)| prefix.starts_with(m)) {
        return format!("it looks like {what}");
    }
    if prefix.is_empty() {
        return "it is empty".into();
    }
    let hex: Vec<String> = prefix.iter().map(|b| format!("{b:02x}")).collect();
    format!("it starts with the bytes {}", hex.join(" "))
}

/// Reads the first bytes of `input` and checks them against `format`, then gives back a reader
/// over the whole stream, and the window its decoder needs ([`window_of`]).
fn sniffed(mut input: ChannelReader, format: Compression) -> Result<(impl Read, u64), DecodeError> {
    let mut prefix = Vec::with_capacity(HEADER_BYTES);
    let mut byte = [0u8; HEADER_BYTES];
    while prefix.len() < HEADER_BYTES {
        match input.read(&mut byte[..HEADER_BYTES - prefix.len()]) {
            Ok(0) => break,
            Ok(n) => prefix.extend_from_slice(&byte[..n]),
            Err(e) => {
                return Err(DecodeError::Corrupt {
                    format: format.name(),
                    message: e.to_string(),
                })
            }
        }
    }
    if !has_magic(format, &prefix) {
        return Err(DecodeError::Corrupt {
            format: format.name(),
            message: format!(
                "the download is not {} data: {} (check `decompress` in the manifest)",
                format.name(),
                describe(&prefix[..prefix.len().min(SNIFF_BYTES)])
            ),
        });
    }
    let window = window_of(format, &prefix).map_err(|message| DecodeError::Corrupt {
        format: format.name(),
        message,
    })?;
    Ok((std::io::Cursor::new(prefix).chain(input), window))
}

pub fn run(
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    tx: mpsc::Sender<Part>,
    compression: Option<Compression>,
    algorithm: Algorithm,
    parts: &Parts,
) -> Result<Digests, DecodeError> {
    let input = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let format = compression.map(Compression::name).unwrap_or("raw");
    let corrupt = |e: std::io::Error| {
        let over_limit = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<liblzma::stream::Error>())
            .is_some_and(|inner| matches!(inner, liblzma::stream::Error::MemLimit));
        DecodeError::Corrupt {
            format,
            message: if over_limit {
                over_the_xz_limit()
            } else {
                e.to_string()
            },
        }
    };
    let Some(format) = compression else {
        let mut input = input;
        return split(&mut input, &tx, algorithm, parts).map_err(|e| match e {
            SplitError::Read(e) => corrupt(e),
            SplitError::UploadStopped => DecodeError::UploadStopped,
        });
    };
    let (input, window) = sniffed(input, format)?;
    // The window is held from the parts' budget while the decoder lives (see `budget`), and
    // the decoder's parts go by a windowed decoder's rule.
    let window = usize::try_from(window).unwrap_or(usize::MAX);
    let _window = parts.budget.hold_window(window);
    let parts = &Parts {
        // A window too large to share (an xz -9 dictionary) is held with one part at a time
        // beside it: the smallest S3 takes.
        size: if window > super::budget::WINDOWS {
            parts.size.min(super::MIN_PART_SIZE)
        } else {
            parts.size
        },
        budget: parts.budget.windowed(),
    };
    let mut reader: Box<dyn Read> = match format {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input).map_err(corrupt)?),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_stream(
            input,
            xz_stream(window as u64).map_err(corrupt)?,
        )),
    };
    split(&mut reader, &tx, algorithm, parts).map_err(|e| match e {
        SplitError::Read(e) => corrupt(e),
        SplitError::UploadStopped => DecodeError::UploadStopped,
    })
}

pub enum SplitError {
    Read(std::io::Error),
    UploadStopped,
}

/// What the decoded stream hashed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// In the algorithm the manifest declares.
    pub declared: Checksum,
    pub sha256: Checksum,
    pub size: u64,
}

/// Parts per size step: every this many parts the part size doubles, so that an image of
/// unknown size never runs into S3's 10,000-part limit (8 MiB parts reach 484 GiB) while the
/// usual image keeps small parts and little memory.
pub const PARTS_PER_STEP: u32 = 2_000;

/// The size of part `number` (1-based) when parts start at `part_size`.
pub fn part_size_of(number: u32, part_size: usize) -> usize {
    part_size.saturating_mul(1 << ((number - 1) / PARTS_PER_STEP).min(4))
}

/// How the decoded bytes are cut: the size parts start at, and the run's budget they are held
/// against.
#[derive(Debug, Clone)]
pub struct Parts {
    pub size: usize,
    pub budget: MemoryBudget,
}

/// What the first part's buffer starts at: it grows, doubling, as bytes arrive, so that an
/// image of a few KiB holds a few KiB and not a whole part.
pub const FIRST_BUFFER: usize = 64 * 1024;
/// Past this, the first part grows to a whole part at once. A hold that grows is given back
/// while it waits for room (see [`super::budget`]), so its buffer is beyond the budget then:
/// at most this much.
pub const FIRST_BUFFER_DOUBLING: usize = 1024 * 1024;

/// Cuts `reader` into parts (the last one shorter, possibly empty), hashing every byte, and hands
/// them to the uploader. Parts start at `parts.size` and grow with [`part_size_of`]; each is
/// held against `parts.budget` until it is uploaded (or, alone, published).
pub fn split(
    reader: &mut dyn Read,
    tx: &mpsc::Sender<Part>,
    algorithm: Algorithm,
    parts: &Parts,
) -> Result<Digests, SplitError> {
    let mut hasher = WithSha256::new(algorithm);
    let mut total = 0u64;
    let mut number = 1u32;
    loop {
        let part_size = part_size_of(number, parts.size);
        // After the first part the image is known to be large: its parts are allocated whole.
        let start = if number == 1 {
            FIRST_BUFFER.min(part_size)
        } else {
            part_size
        };
        let mut held = parts.budget.hold(start);
        let mut buf = vec![0u8; start];
        let mut filled = 0;
        while filled < part_size {
            if filled == buf.len() {
                let grown = match buf.len() {
                    n if n < FIRST_BUFFER_DOUBLING => (n * 2).min(part_size),
                    _ => part_size,
                };
                held.resize(grown);
                buf.resize(grown, 0);
            }
            let n = reader.read(&mut buf[filled..]).map_err(SplitError::Read)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        // What a short part does not use goes back (its Bytes would keep the whole buffer).
        if buf.capacity() > filled + filled / 2 {
            buf.shrink_to_fit();
            held.resize(buf.capacity());
        }
        hasher.update(&buf);
        total += filled as u64;
        let last = filled < part_size;
        if tx
            .blocking_send(Part {
                number,
                data: Bytes::from(buf),
                last,
                held: Some(held),
            })
            .is_err()
        {
            return Err(SplitError::UploadStopped);
        }
        if last {
            let (declared, sha256) = hasher.finish();
            return Ok(Digests {
                declared,
                sha256,
                size: total,
            });
        }
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(data: Vec<u8>, format: Compression) -> Result<Digests, DecodeError> {
        let (tx_in, rx_in) = mpsc::channel(4);
        let (tx_parts, mut rx_parts) = mpsc::channel(4);
        let drain = std::thread::spawn(move || while rx_parts.blocking_recv().is_some() {});
        tx_in.try_send(Ok(Bytes::from(data))).unwrap();
        drop(tx_in);
        let parts = Parts {
            size: 1 << 20,
            budget: MemoryBudget::new(4 << 20, 1),
        };
        let out = run(rx_in, tx_parts, Some(format), Algorithm::Sha256, &parts);
        drain.join().unwrap();
        out
    }

    fn message(e: DecodeError) -> String {
        match e {
            DecodeError::Corrupt { format, message } => format!("{format}: {message}"),
            DecodeError::UploadStopped => "upload stopped".into(),
        }
    }

    fn xz_of(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = liblzma::read::XzEncoder::new(data, 6);
        enc.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn names_the_format_the_data_really_has() {
        let mut gz = Vec::new();
        let mut enc = flate2::read::GzEncoder::new(&b"hello"[..], flate2::Compression::fast());
        enc.read_to_end(&mut gz).unwrap();
        let cases: [(Vec<u8>, Compression, &str); 5] = [
            (gz, Compression::Xz, "xz: the download is not xz data: it is gzip data"),
            (
                xz_of(b"hello"),
                Compression::Zstd,
                "zstd: the download is not zstd data: it is xz data",
            ),
            (
                b"<!DOCTYPE html><p>Not Found".to_vec(),
                Compression::Gzip,
                "gzip: the download is not gzip data: it looks like text starting with `<` (an HTML error page?)",
            ),
            (
                vec![0xEB, 0x63, 0x90, 0x10, 0x8E, 0xD0, 0xBC],
                Compression::Xz,
                "xz: the download is not xz data: it starts with the bytes eb 63 90 10 8e d0",
            ),
            (Vec::new(), Compression::Zstd, "zstd: the download is not zstd data: it is empty"),
        ];
        for (data, format, expected) in cases {
            let err = decode(data, format).unwrap_err();
            let text = message(err);
            assert!(text.starts_with(expected), "{text}");
        }
    }

    #[test]
    fn parts_grow_so_that_ten_thousand_always_suffice() {
        let mib = 1 << 20;
        assert_eq!(part_size_of(1, 8 * mib), 8 * mib);
        assert_eq!(part_size_of(2_000, 8 * mib), 8 * mib);
        assert_eq!(part_size_of(2_001, 8 * mib), 16 * mib);
        assert_eq!(part_size_of(10_000, 8 * mib), 128 * mib);
        let capacity: u64 = (1..=10_000).map(|n| part_size_of(n, 8 * mib) as u64).sum();
        assert!(capacity > 480 * 1024 * mib as u64, "{capacity}");
    }

    #[test]
    fn the_right_format_still_decodes() {
        let digests = decode(xz_of(b"hello"), Compression::Xz).unwrap();
        assert_eq!(digests.size, 5);
        assert_eq!(digests.sha256, Checksum::sha256(b"hello"));
    }

    /// A file that declares a 1 GiB dictionary is refused before the decoder allocates it.
    #[test]
    fn xz_decoding_stays_under_its_memory_limit() {
        let mut data = xz_of(b"small data, huge dictionary");
        // Block header after the 12-byte stream header: size byte, flags, optional sizes, then
        // the LZMA2 filter (id 0x21, 1 property byte: the dictionary size code), padding, CRC32.
        let start = 12;
        let header_len = (data[start] as usize + 1) * 4;
        let flags = data[start + 1];
        let mut pos = start + 2;
        for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
            if present {
                while data[pos] & 0x80 != 0 {
                    pos += 1;
                }
                pos += 1;
            }
        }
        assert_eq!(&data[pos..pos + 2], &[0x21, 0x01], "an LZMA2 filter");
        data[pos + 2] = 36; // 2 << 29 bytes = 1 GiB
        let crc_at = start + header_len - 4;
        let mut crc = flate2::Crc::new();
        crc.update(&data[start..crc_at]);
        data[crc_at..crc_at + 4].copy_from_slice(&crc.sum().to_le_bytes());

        let text = message(decode(data, Compression::Xz).unwrap_err());
        assert!(
            text.contains("would take more than 256 MiB of memory"),
            "{text}"
        );
    }

    #[test]
    fn the_window_is_read_from_the_header() {
        const MIB: u64 = 1 << 20;
        let xz_at = |level| {
            let mut out = Vec::new();
            let mut enc = liblzma::read::XzEncoder::new(&b"hello"[..], level);
            enc.read_to_end(&mut out).unwrap();
            out
        };
        assert_eq!(
            window_of(Compression::Xz, &xz_at(9)).unwrap(),
            65 * MIB,
            "xz -9"
        );
        assert_eq!(
            window_of(Compression::Xz, &xz_at(6)).unwrap(),
            9 * MIB,
            "xz -6"
        );
        assert_eq!(
            window_of(Compression::Xz, &xz_at(0)).unwrap(),
            MIB + 256 * 1024,
            "xz -0"
        );
        let threaded = {
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(2)
                .preset(6)
                .encoder()
                .unwrap();
            let data = vec![7u8; 4 << 20];
            let mut out = Vec::new();
            let mut enc = liblzma::read::XzEncoder::new_stream(&data[..], stream);
            enc.read_to_end(&mut out).unwrap();
            out
        };
        assert_eq!(
            window_of(Compression::Xz, &threaded).unwrap(),
            XZ_THREADING,
            "xz -T: a block may be decoded on each of two threads"
        );
        assert_eq!(
            window_of(Compression::Xz, b"\xFD7zXZ\x00").unwrap(),
            65 * MIB,
            "a header cut short is taken at the largest preset"
        );
        // zstd: a window descriptor (2 MiB), and a single-segment frame of 200 bytes.
        let descriptor = b"\x28\xB5\x2F\xFD\x00\x58";
        assert_eq!(window_of(Compression::Zstd, descriptor).unwrap(), 3 * MIB);
        let single = b"\x28\xB5\x2F\xFD\x20\xC8";
        assert_eq!(window_of(Compression::Zstd, single).unwrap(), 200 + MIB);
        // What the zstd library writes: level 19's window (2^23) when the size is not told,
        // level 1's (2^19) too.
        let at = |level| {
            window_of(
                Compression::Zstd,
                &zstd::encode_all(&b"hello"[..], level).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(at(19), 8 * MIB + MIB);
        assert_eq!(at(1), MIB / 2 + MIB);
        // Hostile headers are refused before anything waits for room: a 4 GiB xz dictionary,
        // a zstd window of 2^41, a single-segment frame of 2^64 - 1 bytes.
        assert_eq!(
            window_of(Compression::Xz, b""),
            Ok(65 * MIB),
            "no header: xz -9's"
        );
        let block =
            b"\xFD7zXZ\x00\x00\x04\xE6\xD6\xB4\x46\x02\x00\x21\x01\x28\x00\x00\x00\x00\x00\x00\x00";
        assert!(
            window_of(Compression::Xz, block).is_err(),
            "a 4 GiB dictionary"
        );
        let wide = b"\x28\xB5\x2F\xFD\x00\xF8";
        assert!(window_of(Compression::Zstd, wide).is_err(), "a 2^41 window");
        let endless = b"\x28\xB5\x2F\xFD\xE0\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF";
        assert!(
            window_of(Compression::Zstd, endless).is_err(),
            "2^64 - 1 bytes"
        );
    }
}

//! The blocking stage: decompress, hash the output, cut it into upload parts.

use std::io::Read;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::checksum::{Algorithm, Checksum};
use crate::manifest::Compression;
use crate::pipeline::hash::WithSha256;
use crate::pipeline::upload::Part;

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

/// xz decoding on up to two threads for multi-block files, within a memory budget: past it,
/// liblzma falls back to one thread instead of growing.
fn xz_stream() -> std::io::Result<liblzma::stream::Stream> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2) as u32;
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(48 * 1024 * 1024)
        .memlimit_stop(u64::MAX)
        .decoder()
        .map_err(std::io::Error::other)
}

pub fn run(
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    tx: mpsc::Sender<Part>,
    compression: Option<Compression>,
    algorithm: Algorithm,
    part_size: usize,
) -> Result<Digests, DecodeError> {
    let input = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let format = compression.map(Compression::name).unwrap_or("raw");
    let corrupt = |e: std::io::Error| DecodeError::Corrupt {
        format,
        message: e.to_string(),
    };
    let mut reader: Box<dyn Read> = match compression {
        None => Box::new(input),
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Some(Compression::Zstd) => {
            Box::new(zstd::stream::read::Decoder::new(input).map_err(corrupt)?)
        }
        Some(Compression::Xz) => Box::new(liblzma::read::XzDecoder::new_stream(
            input,
            xz_stream().map_err(corrupt)?,
        )),
    };
    split(&mut reader, &tx, algorithm, part_size).map_err(|e| match e {
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

/// Cuts `reader` into parts of `part_size` (the last one shorter, possibly empty), hashing
/// every byte, and hands them to the uploader.
pub fn split(
    reader: &mut dyn Read,
    tx: &mpsc::Sender<Part>,
    algorithm: Algorithm,
    part_size: usize,
) -> Result<Digests, SplitError> {
    let mut hasher = WithSha256::new(algorithm);
    let mut total = 0u64;
    let mut number = 1u32;
    loop {
        let mut buf = vec![0u8; part_size];
        let mut filled = 0;
        while filled < part_size {
            let n = reader.read(&mut buf[filled..]).map_err(SplitError::Read)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        hasher.update(&buf);
        total += filled as u64;
        let last = filled < part_size;
        if tx
            .blocking_send(Part {
                number,
                data: Bytes::from(buf),
                last,
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

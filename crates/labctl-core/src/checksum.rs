//! Content digests as written in manifests and records: `sha256:<hex>` or `sha512:<hex>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A digest with its algorithm. The hex is stored lowercase so that comparisons are exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum {
    pub algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("`{0}` has no algorithm prefix; expected `sha256:<hex>` or `sha512:<hex>`")]
    MissingAlgorithm(String),
    #[error("unsupported checksum algorithm `{0}`; expected `sha256` or `sha512`")]
    UnsupportedAlgorithm(String),
    #[error("a {algorithm} digest has {expected} hex digits, `{value}` has {actual}")]
    WrongLength {
        algorithm: &'static str,
        expected: usize,
        actual: usize,
        value: String,
    },
    #[error("`{0}` is not hexadecimal")]
    NotHex(String),
}

impl Checksum {
    pub fn new(algorithm: Algorithm, hex: &str) -> Result<Checksum, ChecksumError> {
        if hex.len() != algorithm.hex_len() {
            return Err(ChecksumError::WrongLength {
                algorithm: algorithm.name(),
                expected: algorithm.hex_len(),
                actual: hex.len(),
                value: hex.to_string(),
            });
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumError::NotHex(hex.to_string()));
        }
        Ok(Checksum {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        format!("{}:{}", self.algorithm.name(), &self.hex[..12])
    }

    /// Digest of a byte slice (used for small things: records, manifests, template files).
    pub fn of_bytes(algorithm: Algorithm, bytes: &[u8]) -> Checksum {
        let hex = match algorithm {
            Algorithm::Sha256 => to_hex(&sha2::Sha256::digest(bytes)),
            Algorithm::Sha512 => to_hex(&sha2::Sha512::digest(bytes)),
        };
        Checksum { algorithm, hex }
    }

    pub fn sha256(bytes: &[u8]) -> Checksum {
        Checksum::of_bytes(Algorithm::Sha256, bytes)
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

impl FromStr for Checksum {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Checksum, ChecksumError> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| ChecksumError::MissingAlgorithm(s.to_string()))?;
        let algorithm = match algo.to_ascii_lowercase().as_str() {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(ChecksumError::UnsupportedAlgorithm(algo.to_string())),
        };
        Checksum::new(algorithm, hex)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_normalizes_case() {
        let c: Checksum = format!("SHA256:{}", EMPTY_SHA256.to_uppercase())
            .parse()
            .unwrap();
        assert_eq!(c.to_string(), format!("sha256:{EMPTY_SHA256}"));
        assert_eq!(c, Checksum::sha256(b""));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            "abc".parse::<Checksum>(),
            Err(ChecksumError::MissingAlgorithm(_))
        ));
        assert!(matches!(
            "md5:abc".parse::<Checksum>(),
            Err(ChecksumError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Checksum>(),
            Err(ChecksumError::WrongLength { actual: 3, .. })
        ));
        let not_hex = format!("sha256:{}", "g".repeat(64));
        assert!(matches!(
            not_hex.parse::<Checksum>(),
            Err(ChecksumError::NotHex(_))
        ));
    }

    #[test]
    fn sha512_has_128_digits() {
        let c = Checksum::of_bytes(Algorithm::Sha512, b"x");
        assert_eq!(c.hex().len(), 128);
        assert_eq!(c.to_string().parse::<Checksum>().unwrap(), c);
    }
}

//! Incremental sha256/sha512, hashed as bytes stream past.

use sha2::{Digest, Sha256, Sha512};

use crate::checksum::{to_hex, Algorithm, Checksum};

#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Checksum {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, to_hex(&h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, to_hex(&h.finalize())),
        };
        Checksum::new(algorithm, &hex).expect("digests have the right length")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_whole() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut h = Hasher::new(algorithm);
            h.update(b"hello ");
            h.update(b"world");
            assert_eq!(h.finish(), Checksum::of_bytes(algorithm, b"hello world"));
        }
    }
}

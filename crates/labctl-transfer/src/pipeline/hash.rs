//! Incremental sha256/sha512, hashed as bytes stream past.

use sha2::{Digest, Sha256, Sha512};

use labctl_core::checksum::{to_hex, Algorithm, Checksum};

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

/// The declared algorithm's digest and, beside it, the sha256 that the consumer index lists
/// (one hasher when the declared algorithm is sha256).
#[derive(Clone)]
pub struct WithSha256 {
    declared: Hasher,
    sha256: Option<Hasher>,
}

impl WithSha256 {
    pub fn new(algorithm: Algorithm) -> WithSha256 {
        WithSha256 {
            declared: Hasher::new(algorithm),
            sha256: (algorithm != Algorithm::Sha256).then(|| Hasher::new(Algorithm::Sha256)),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.declared.update(bytes);
        if let Some(h) = &mut self.sha256 {
            h.update(bytes);
        }
    }

    /// `(declared, sha256)`.
    pub fn finish(self) -> (Checksum, Checksum) {
        let declared = self.declared.finish();
        let sha256 = match self.sha256 {
            Some(h) => h.finish(),
            None => declared.clone(),
        };
        (declared, sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_beside_the_declared_algorithm() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut h = WithSha256::new(algorithm);
            h.update(b"hello ");
            h.update(b"world");
            let (declared, sha256) = h.finish();
            assert_eq!(declared, Checksum::of_bytes(algorithm, b"hello world"));
            assert_eq!(sha256, Checksum::sha256(b"hello world"));
        }
    }

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

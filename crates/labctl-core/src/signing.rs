//! Signing the consumer index with the lab's minisign key.
//!
//! The secret key comes from the environment (a CI secret), never from a file in the
//! repository. Nothing here puts the key, or text derived from it, into an error or a log line.

use std::borrow::Cow;

use crate::hint::Hint;
use std::fmt;

use base64::Engine;

pub const SECRET_KEY_VAR: &str = "LABCTL_MINISIGN_SECRET_KEY";
pub const PASSWORD_VAR: &str = "LABCTL_MINISIGN_PASSWORD";

/// Secret keys are a few hundred bytes; anything far larger is not one.
const MAX_SECRET_KEY_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("spec.index.signing is configured, but {SECRET_KEY_VAR} is not set")]
    MissingKey,
    #[error("{SECRET_KEY_VAR} is not a minisign secret key ({0})")]
    InvalidKey(&'static str),
    #[error("the secret key in {SECRET_KEY_VAR} is encrypted, and {PASSWORD_VAR} is not set")]
    Encrypted,
    #[error("the secret key in {SECRET_KEY_VAR} cannot be decrypted with {PASSWORD_VAR}")]
    WrongPassword,
    #[error("the secret key in {SECRET_KEY_VAR} does not belong to spec.index.signing.minisign.publicKey (key ID {key_id})")]
    WrongKey { key_id: String },
    #[error("invalid spec.index.signing.minisign.publicKey")]
    InvalidPublicKey,
    #[error("signing failed")]
    Sign,
}

impl Hint for SigningError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            SigningError::MissingKey => Some(
                "set LABCTL_MINISIGN_SECRET_KEY to the contents of the secret key file (`minisign -G` writes it), e.g. from a CI secret",
            ),
            SigningError::InvalidKey(_) => Some(
                "use the whole secret key file `minisign -G` wrote (both lines), or its second line",
            ),
            SigningError::Encrypted => Some(
                "set LABCTL_MINISIGN_PASSWORD, or generate a key without a password (`minisign -G -W`)",
            ),
            SigningError::WrongKey { .. } => Some(
                "the manifest's publicKey and the secret key must come from the same `minisign -G`",
            ),
            _ => None,
        };
        hint.map(Cow::Borrowed)
    }
}

/// The lab's index signing key, checked against the manifest's public key.
pub struct IndexSigner {
    secret: minisign::SecretKey,
    public: minisign::PublicKey,
}

impl fmt::Debug for IndexSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexSigner(<secret key>)")
    }
}

impl IndexSigner {
    /// From the settings: no secret key is [`SigningError::MissingKey`].
    pub fn from_parts(
        public_key: &str,
        secret: Option<&str>,
        password: Option<&str>,
    ) -> Result<IndexSigner, SigningError> {
        let secret = secret.ok_or(SigningError::MissingKey)?;
        IndexSigner::new(public_key, secret, password.map(str::to_string))
    }

    /// `secret` is the secret key file's contents, or just its base64 line.
    pub fn new(
        public_key: &str,
        secret: &str,
        password: Option<String>,
    ) -> Result<IndexSigner, SigningError> {
        if secret.len() > MAX_SECRET_KEY_BYTES {
            return Err(SigningError::InvalidKey("far too long"));
        }
        let public = minisign::PublicKey::from_base64(public_key.trim())
            .map_err(|_| SigningError::InvalidPublicKey)?;
        let line = secret
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or(SigningError::InvalidKey("no key line"))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|_| SigningError::InvalidKey("not base64"))?;
        // sig_alg (2) kdf_alg (2) chk_alg (2) salt (32) opslimit (8) memlimit (8) keynum (8)
        // secret key (64) checksum (32).
        if raw.len() != 158 || &raw[..2] != b"Ed" {
            return Err(SigningError::InvalidKey(
                "not an Ed25519 minisign secret key",
            ));
        }
        let unencrypted = raw[2..4] == [0, 0];
        let secret = if unencrypted {
            // Read directly: some minisign releases write unencrypted keys with an all-zero
            // checksum, which the box reader rejects as corrupted. Whether the key is the
            // right one is proven below by a signature that must verify.
            minisign::SecretKey::from_bytes(&raw)
                .map_err(|_| SigningError::InvalidKey("unreadable"))?
        } else {
            // minisign prompts on the terminal for a missing password; CI has none to answer,
            // so the password must come from the environment.
            let password = password.ok_or(SigningError::Encrypted)?;
            let boxed = minisign::SecretKeyBox::from_string(&format!(
                "untrusted comment: labctl index signing key\n{line}\n"
            ))
            .map_err(|_| SigningError::InvalidKey("unreadable"))?;
            boxed.into_secret_key(Some(password)).map_err(|e| {
                if e.to_string().contains("password") {
                    SigningError::WrongPassword
                } else {
                    SigningError::InvalidKey("unreadable")
                }
            })?
        };
        let signer = IndexSigner { secret, public };
        // Signing with the public key given makes minisign check that the two belong together.
        signer.sign(b"labctl key check", "labctl key check")?;
        Ok(signer)
    }

    /// A `.minisig` file for `data`, which the stock `minisign -V` verifies.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String, SigningError> {
        minisign::sign(
            Some(&self.public),
            &self.secret,
            std::io::Cursor::new(data),
            Some(trusted_comment),
            Some("signature of images/SHA256SUMS by labctl"),
        )
        .map(|b| b.to_string())
        .map_err(|e| {
            if e.to_string().contains("public key") {
                SigningError::WrongKey {
                    key_id: key_id(&self.public),
                }
            } else {
                SigningError::Sign
            }
        })
    }
}

fn key_id(public: &minisign::PublicKey) -> String {
    public
        .keynum()
        .iter()
        .rev()
        .map(|b| format!("{b:02X}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_with_the_matching_key_only() {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let secret = pair.sk.to_box(None).unwrap().to_string();
        let public = pair.pk.to_base64();
        let signer = IndexSigner::new(&public, &secret, None).unwrap();
        let sig = signer.sign(b"sums", "trusted").unwrap();
        assert!(crate::consumer_index::signature_verifies(
            &public,
            b"sums",
            sig.as_bytes()
        ));
        assert!(!crate::consumer_index::signature_verifies(
            &public,
            b"other",
            sig.as_bytes()
        ));
        // The base64 line alone is enough.
        let line = secret.lines().nth(1).unwrap();
        IndexSigner::new(&public, line, None).unwrap();

        let other = minisign::KeyPair::generate_unencrypted_keypair()
            .unwrap()
            .pk
            .to_base64();
        let err = IndexSigner::new(&other, &secret, None).unwrap_err();
        assert!(matches!(err, SigningError::WrongKey { .. }), "{err}");
        assert!(!format!("{err} {:?}", err.hint()).contains(line));
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let public = minisign::KeyPair::generate_unencrypted_keypair()
            .unwrap()
            .pk
            .to_base64();
        for bad in [
            "",
            "untrusted comment: x\n",
            "RWQnot-a-key",
            &"A".repeat(20_000),
        ] {
            let err = IndexSigner::new(&public, bad, None).unwrap_err();
            let text = format!("{err}");
            assert!(
                matches!(err, SigningError::InvalidKey(_)),
                "{bad:?}: {text}"
            );
            if bad.len() > 3 {
                assert!(!text.contains(bad.trim()), "{text}");
            }
        }
    }
}

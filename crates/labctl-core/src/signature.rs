//! Signatures over what is downloaded: minisign over the image itself (verified as the bytes
//! stream past), OpenPGP over a checksum list (detached, or a clearsigned list).

use base64::Engine;
use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("invalid minisign public key: {0}")]
    MinisignKey(String),
    #[error("cannot read the minisign signature {url}: {message}")]
    MinisignSignature { url: String, message: String },
    #[error("{url} is a legacy (non-prehashed) minisign signature; labctl verifies signatures while the image streams, which needs prehashed signatures (`minisign -S -H`, the default since minisign 0.10)")]
    MinisignLegacy { url: String },
    #[error("the minisign signature {url} was made by key {signed_by}, not by the configured key {key_id}")]
    MinisignWrongKey {
        url: String,
        key_id: String,
        signed_by: String,
    },
    #[error("the minisign signature {url} does not verify with key {key_id}: the downloaded bytes are not what was signed")]
    MinisignBad { url: String, key_id: String },
    #[error("invalid OpenPGP public key: {0}")]
    PgpKey(String),
    #[error("cannot read the OpenPGP signature {url}: {message}")]
    PgpSignature { url: String, message: String },
    #[error("the OpenPGP signature {url} does not verify with key {fingerprint}")]
    PgpBad { url: String, fingerprint: String },
}

/// A minisign public key, with the ID minisign prints for it.
#[derive(Debug, Clone)]
pub struct MinisignKey {
    pub key: minisign_verify::PublicKey,
    pub key_id: String,
}

/// minisign shows key IDs as 16 upper-case hex digits of the little-endian 8-byte ID.
fn minisign_key_id(raw: &[u8]) -> String {
    raw.iter().rev().map(|b| format!("{b:02X}")).collect()
}

impl MinisignKey {
    pub fn parse(base64_key: &str) -> Result<MinisignKey, SignatureError> {
        let trimmed = base64_key.trim();
        let key = minisign_verify::PublicKey::from_base64(trimmed)
            .map_err(|e| SignatureError::MinisignKey(e.to_string()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .map_err(|e| SignatureError::MinisignKey(e.to_string()))?;
        Ok(MinisignKey {
            key,
            key_id: minisign_key_id(&raw[2..10]),
        })
    }
}

/// A downloaded minisign signature, ready to verify a stream.
#[derive(Clone)]
pub struct MinisignCheck {
    pub key: MinisignKey,
    pub signature: minisign_verify::Signature,
    pub url: String,
}

impl std::fmt::Debug for MinisignCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MinisignCheck({}, key {})", self.url, self.key.key_id)
    }
}

impl MinisignCheck {
    pub fn new(
        key: MinisignKey,
        signature_text: &str,
        url: &str,
    ) -> Result<MinisignCheck, SignatureError> {
        let signature = minisign_verify::Signature::decode(signature_text).map_err(|e| {
            SignatureError::MinisignSignature {
                url: url.into(),
                message: e.to_string(),
            }
        })?;
        let check = MinisignCheck {
            key,
            signature,
            url: url.into(),
        };
        // Key and mode problems are reported before any image byte is downloaded.
        check.verifier()?;
        Ok(check)
    }

    pub fn verifier(&self) -> Result<minisign_verify::StreamVerifier<'_>, SignatureError> {
        self.key
            .key
            .verify_stream(&self.signature)
            .map_err(|e| match e {
                minisign_verify::Error::UnsupportedLegacyMode => SignatureError::MinisignLegacy {
                    url: self.url.clone(),
                },
                minisign_verify::Error::UnexpectedKeyId => SignatureError::MinisignWrongKey {
                    url: self.url.clone(),
                    key_id: self.key.key_id.clone(),
                    signed_by: signature_key_id(&self.signature),
                },
                other => SignatureError::MinisignSignature {
                    url: self.url.clone(),
                    message: other.to_string(),
                },
            })
    }

    pub fn bad(&self) -> SignatureError {
        SignatureError::MinisignBad {
            url: self.url.clone(),
            key_id: self.key.key_id.clone(),
        }
    }
}

/// The key ID a minisign signature names (from its encoded form).
fn signature_key_id(signature: &minisign_verify::Signature) -> String {
    // The untrusted comment usually names it; the binary form has it at bytes 2..10.
    let comment = signature.untrusted_comment();
    comment
        .rsplit(' ')
        .next()
        .filter(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_uppercase)
        .unwrap_or_else(|| "(unknown)".into())
}

/// An OpenPGP public key (certificate) and its fingerprint.
#[derive(Debug, Clone)]
pub struct PgpKey {
    pub key: SignedPublicKey,
    pub fingerprint: String,
}

impl PgpKey {
    pub fn parse(armored: &str) -> Result<PgpKey, SignatureError> {
        let (key, _) = SignedPublicKey::from_string(armored)
            .map_err(|e| SignatureError::PgpKey(e.to_string()))?;
        let fingerprint = format!("{:X}", key.fingerprint());
        Ok(PgpKey { key, fingerprint })
    }
}

/// Verifies a detached signature (armored or binary) over `content`.
pub fn verify_detached(
    key: &PgpKey,
    content: &[u8],
    signature: &[u8],
    url: &str,
) -> Result<(), SignatureError> {
    let parsed = if signature.starts_with(b"-----BEGIN") {
        std::str::from_utf8(signature)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                DetachedSignature::from_string(s)
                    .map(|(s, _)| s)
                    .map_err(|e| e.to_string())
            })
    } else {
        DetachedSignature::from_bytes(signature).map_err(|e| e.to_string())
    }
    .map_err(|message| SignatureError::PgpSignature {
        url: url.into(),
        message,
    })?;
    // Distributions sign with the primary key or a signing subkey: try each.
    let primary_ok = parsed.verify(&key.key, content).is_ok();
    let subkey_ok = || {
        key.key
            .public_subkeys
            .iter()
            .any(|sub| parsed.verify(sub, content).is_ok())
    };
    if primary_ok || subkey_ok() {
        Ok(())
    } else {
        Err(SignatureError::PgpBad {
            url: url.into(),
            fingerprint: key.fingerprint.clone(),
        })
    }
}

/// Verifies a clearsigned document and returns the text that was signed.
pub fn verify_clearsigned(
    key: &PgpKey,
    document: &str,
    url: &str,
) -> Result<String, SignatureError> {
    let (message, _) = CleartextSignedMessage::from_string(document).map_err(|e| {
        SignatureError::PgpSignature {
            url: url.into(),
            message: e.to_string(),
        }
    })?;
    let ok = message.verify(&key.key).is_ok()
        || key
            .key
            .public_subkeys
            .iter()
            .any(|sub| message.verify(sub).is_ok());
    if !ok {
        return Err(SignatureError::PgpBad {
            url: url.into(),
            fingerprint: key.fingerprint.clone(),
        });
    }
    Ok(message.signed_text().replace("\r\n", "\n"))
}

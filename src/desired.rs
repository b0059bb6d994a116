//! Desired state: the manifest's images as normalized specs, in dependency order, with what has
//! to be read from elsewhere first — Packer template hashes from disk, checksums from the
//! checksum lists the manifest names.

use crate::graph::DependencyGraph;
use crate::manifest::{HttpSource, Manifest, Signature, Source};
use crate::plan::Desired;
use crate::source::checksum_list::{self, PgpCheck, ResolveError};
use crate::source::signature::{PgpKey, SignatureError};
use crate::spec::{NormalizedSpec, SpecSignature, SpecSource};

#[derive(Debug, thiserror::Error)]
#[error("image `{image}`: cannot read Packer template directory `{dir}`")]
pub struct TemplateError {
    pub image: String,
    pub dir: String,
    #[source]
    pub source: std::io::Error,
}

pub fn build(manifest: &Manifest, graph: &DependencyGraph) -> Result<Vec<Desired>, TemplateError> {
    graph
        .order()
        .into_iter()
        .map(|i| {
            let image = &manifest.images[i];
            let template_hash = match &image.source {
                Source::Packer(p) => {
                    let dir = manifest.base_dir.join(&p.path);
                    let hash =
                        crate::template_hash::hash_dir(&dir, &p.artifact).map_err(|source| {
                            TemplateError {
                                image: image.name.clone(),
                                dir: dir.display().to_string(),
                                source,
                            }
                        })?;
                    Some(hash)
                }
                Source::Http(_) => None,
            };
            let mut desired = Desired::new(NormalizedSpec::of(image, template_hash.as_ref()));
            if let Source::Http(HttpSource {
                signature: Some(Signature::Pgp { armored_key, .. }),
                ..
            }) = &image.source
            {
                desired.pgp_key = Some(armored_key.clone());
            }
            Ok(desired)
        })
        .collect()
}

/// What must vouch for an image's checksum list, if anything.
pub fn pgp_check(d: &Desired) -> Result<Option<PgpCheck>, SignatureError> {
    let SpecSource::Http {
        signature: Some(SpecSignature::Pgp { url, .. }),
        ..
    } = &d.spec.source
    else {
        return Ok(None);
    };
    Ok(Some(PgpCheck {
        key: PgpKey::parse(d.pgp_key.as_deref().unwrap_or_default())?,
        signature_url: url.clone(),
    }))
}

/// Looks up the checksums the manifest takes from checksum lists, verifying their signatures.
/// A list that cannot be fetched leaves the checksum unknown (shown as known after apply) and
/// yields a warning; a list that does not add up (no entry, conflicting entries, a signature
/// that does not verify) is an error.
pub async fn resolve_lists(
    desired: &mut [Desired],
    client: &reqwest::Client,
) -> anyhow::Result<Vec<String>> {
    let policy = crate::source::http::RetryPolicy {
        attempts: 2,
        ..Default::default()
    };
    let mut warnings = Vec::new();
    for d in desired.iter_mut() {
        let SpecSource::Http { url, checksum, .. } = &d.spec.source else {
            continue;
        };
        let Some(list_url) = checksum.strip_prefix("file:") else {
            continue;
        };
        let pgp = pgp_check(d).map_err(|e| anyhow::anyhow!("image `{}`: {e}", d.spec.name))?;
        match checksum_list::resolve(client, list_url, url, pgp.as_ref(), &policy).await {
            Ok(sum) => d.listed = Some(sum),
            Err(e @ ResolveError::Fetch(..)) => warnings.push(format!(
                "image `{}`: {:#}; its checksum is shown as known after apply",
                d.spec.name,
                anyhow::Error::from(e)
            )),
            Err(e) => return Err(anyhow::anyhow!("image `{}`: {e}", d.spec.name)),
        }
    }
    Ok(warnings)
}

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

/// Looks up the checksums the manifest takes from checksum lists, verifying their signatures;
/// each list is fetched once. A list that cannot be fetched leaves its checksums unknown (shown
/// as known after apply) and yields a warning; a list that does not add up (no entry,
/// conflicting entries, a signature that does not verify) is an error.
pub async fn resolve_lists(
    desired: &mut [Desired],
    client: &reqwest::Client,
) -> anyhow::Result<Vec<String>> {
    let policy = crate::source::http::RetryPolicy {
        attempts: 2,
        ..Default::default()
    };
    // list URL (and signature URL) → the verified text, or why it could not be fetched.
    let mut fetched: std::collections::HashMap<(String, Option<String>), Result<String, String>> =
        Default::default();
    let mut unreachable: std::collections::BTreeMap<String, (String, Vec<String>)> =
        Default::default();
    for d in desired.iter_mut() {
        let SpecSource::Http { url, checksum, .. } = &d.spec.source else {
            continue;
        };
        let Some(list_url) = checksum.list_url() else {
            continue;
        };
        let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("image `{}`: {e}", d.spec.name);
        let pgp = pgp_check(d).map_err(|e| fail(&e))?;
        let id = (
            list_url.to_string(),
            pgp.as_ref().and_then(|p| p.signature_url.clone()),
        );
        if !fetched.contains_key(&id) {
            let result = match checksum_list::fetch_verified(
                client,
                list_url,
                pgp.as_ref(),
                &policy,
            )
            .await
            {
                Ok(text) => Ok(text),
                Err(ResolveError::Fetch(_, e)) => Err(root_cause(&e)),
                Err(e) => return Err(fail(&e)),
            };
            fetched.insert(id.clone(), result);
        }
        match &fetched[&id] {
            Ok(text) => {
                let file = checksum_list::file_name_of(url);
                d.listed = Some(checksum_list::find(text, list_url, file).map_err(|e| fail(&e))?);
            }
            Err(why) => unreachable
                .entry(list_url.to_string())
                .or_insert_with(|| (why.clone(), Vec::new()))
                .1
                .push(d.spec.name.clone()),
        }
    }
    Ok(unreachable
        .into_iter()
        .map(|(list, (why, images))| {
            format!(
                "cannot fetch the checksum list {list} ({why}); the checksums of {} are shown as known after apply (--offline skips fetching)",
                images.join(", ")
            )
        })
        .collect())
}

/// The innermost cause of an error: what actually went wrong, without the wrapping.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

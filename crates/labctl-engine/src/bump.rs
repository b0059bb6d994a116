//! Verifying one new version before `labctl bump` writes it: the manifest with the version
//! moved, the vendor's facts about it (checksum list, `version.yaml`, GitHub's asset digest, the
//! factory's Content-Length), its signature, and one download checked against all of them. The
//! decisions (which check refuses, which digests are written, which trust is earned) are the
//! core's ([`labctl_core::upstream::verdict`]); this gathers what they judge.

use labctl_core::manifest::{
    self, HttpSource, Image, LoadError, Manifest, Signature, Source, SourceChecksum,
};
use labctl_core::pin::Pinned;
use labctl_core::signature::{MinisignCheck, MinisignKey};
use labctl_core::upstream::listing::{GithubRelease, Listing};
use labctl_core::upstream::report::{Report, Status};
use labctl_core::upstream::track::file_name;
use labctl_core::upstream::verdict::{
    self, digests_to_pin, judge, Downloaded, Facts, Refusal as Judged, Trust,
};
use labctl_core::upstream::{Channel, Track};
use labctl_transfer::pipeline::{self, Inspect};
use labctl_transfer::progress::{Done, Failed, Outcome, Progress};
use labctl_transfer::source::channel;
use labctl_transfer::source::http::RetryPolicy;
use labctl_transfer::source::upstream::Listings;

/// Reads an edited manifest text as the command line reads the manifest file (its directory,
/// its rules).
pub type Reparse<'a> = dyn Fn(&str) -> Result<Manifest, LoadError> + Sync + 'a;

/// One image moved to a new version, verified.
pub struct Bumped {
    pub old_name: String,
    pub new_name: String,
    pub old_version: String,
    pub new_version: String,
    pub url: String,
    pub size: u64,
    pub published_size: Option<u64>,
    pub pin: Pinned,
    pub trust: Trust,
    /// Independent checks that agreed (GitHub's digest, a size the vendor gave).
    pub cross_checks: Vec<String>,
    pub notes: Option<String>,
    pub release_url: Option<String>,
}

/// Which check refused which bytes: one of the verdict's, or the download itself. Made once per
/// image and reported: its size does not matter.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Judged(#[from] Judged),
    #[error("cannot download {url}")]
    Download {
        url: String,
        #[source]
        source: pipeline::PipelineError,
    },
}

/// Downloads and verifies the newest allowed version of every image in `report` that has one:
/// the bumps that verified, and a line for each image whose lookup or verification failed.
#[allow(clippy::too_many_arguments)]
pub async fn verify_all(
    report: &Report,
    manifest: &Manifest,
    text: &str,
    listings: &Listings,
    client: &reqwest::Client,
    api: &reqwest::Client,
    progress: &dyn Progress,
    reparse: &Reparse<'_>,
) -> (Vec<Bumped>, Vec<String>) {
    let mut failures: Vec<String> = report
        .images
        .iter()
        .filter(|r| r.status == Status::LookupFailed)
        .map(|row| {
            let why = row.error.as_deref().unwrap_or("the lookup failed");
            format!("image `{}`: {why}", row.name)
        })
        .collect();
    let mut bumped: Vec<Bumped> = Vec::new();
    for row in &report.images {
        let Some(candidate) = &row.newest_allowed else {
            continue;
        };
        let Some(index) = manifest.images.iter().position(|i| i.name == row.name) else {
            continue;
        };
        let version = &candidate.version;
        let attempt = bump_one(
            manifest, text, index, version, listings, client, api, progress, reparse,
        )
        .await;
        let name = &row.name;
        match attempt {
            Ok(b) => {
                let said = Done::Said(format!("verified {}", b.new_version));
                progress.finish(name, &Outcome::Done(said));
                bumped.push(b);
            }
            Err(refusal) => {
                progress.finish(name, &Outcome::Failed(Failed::new("refused")));
                let why = crate::failure::one_line(&refusal);
                failures.push(format!("image `{name}` → {version}: {why}"));
            }
        }
    }
    (bumped, failures)
}

/// The image at `index` moved to `version`: the new spec from the edited text, its facts from
/// the vendor, one verified download.
#[allow(clippy::too_many_arguments, clippy::result_large_err)]
pub async fn bump_one(
    manifest: &Manifest,
    text: &str,
    index: usize,
    version: &str,
    listings: &Listings,
    client: &reqwest::Client,
    api: &reqwest::Client,
    progress: &dyn crate::progress::Progress,
    reparse: &Reparse<'_>,
) -> Result<Bumped, Refusal> {
    let image = &manifest.images[index];
    let track = image
        .track
        .as_ref()
        .expect("only tracked images are bumped");
    let Source::Http(old_http) = &image.source else {
        unreachable!("validation tracks HTTP sources only")
    };
    let moved = with_version(manifest, text, index, version, reparse)?;
    let new_image = &moved.images[index];
    let Source::Http(http) = &new_image.source else {
        unreachable!("the source type does not change with the version")
    };
    let url = http.url.clone();

    let release = github_release(listings, image, version);
    let facts = facts(track, http, version, release, api).await?;

    let minisign = minisign_of(http, api).await?;
    let key_id = minisign.as_ref().map(|m| m.key.key_id.clone());
    let inspect = Inspect {
        source_algorithm: Some(verdict::source_algorithm(
            &facts,
            (&old_http.checksum).into(),
            http.decompress.is_some(),
            image.expected.as_ref(),
        )),
        decompress: http.decompress,
        minisign,
        purpose: "downloading to verify",
    };
    let inspected = pipeline::inspect_download(
        client.clone(),
        &new_image.name,
        &url,
        &inspect,
        &pipeline::Settings::default(),
        progress,
    )
    .await
    .map_err(|source| Refusal::Download {
        url: url.clone(),
        source,
    })?;

    let got = Downloaded {
        sha256: inspected.sha256.clone(),
        source: inspected.source.clone(),
        size: inspected.size,
        output: inspected.output.as_ref().map(|o| o.declared.clone()),
        content_type: inspected.info.content_type.clone(),
        signature_ok: inspected.signature_ok,
    };
    let cross_checks = judge(&url, &facts, &got, key_id.as_deref())?;
    let (checksum, expected) =
        digests_to_pin((&old_http.checksum).into(), image.expected.as_ref(), &got)?;
    let trust = Trust::earned(key_id.as_deref(), &facts);
    Ok(Bumped {
        old_name: image.name.clone(),
        new_name: new_image.name.clone(),
        old_version: image.version.clone().unwrap_or_default(),
        new_version: version.to_string(),
        url,
        size: inspected.size,
        published_size: inspected.output.as_ref().map(|o| o.size),
        pin: Pinned {
            image: image.name.clone(),
            version: Some(version.to_string()),
            checksum,
            expected,
        },
        trust,
        cross_checks,
        notes: facts.notes,
        release_url: facts.release_url,
    })
}

/// The manifest with `version` written into the image at `index`: every field that carries it
/// follows, exactly as the next plan will read them.
#[allow(clippy::result_large_err)]
fn with_version(
    manifest: &Manifest,
    text: &str,
    index: usize,
    version: &str,
    reparse: &Reparse<'_>,
) -> Result<Manifest, Refusal> {
    let image = &manifest.images[index];
    let root = manifest::yaml::parse(text).map_err(|(_, m)| Judged::Facts(m))?;
    let moved = labctl_core::pin::apply(
        text,
        &root,
        &[Pinned {
            image: image.name.clone(),
            version: Some(version.to_string()),
            checksum: None,
            expected: None,
        }],
    )
    .map_err(|e| Judged::Facts(e.to_string()))?;
    let moved = reparse(&moved).map_err(|e| {
        Judged::Facts(format!(
            "with version {version} the manifest does not validate: {e}"
        ))
    })?;
    Ok(moved)
}

/// The new version's minisign signature, fetched and checked against the manifest's key before
/// any byte of the image: a signature by another key is refused here.
#[allow(clippy::result_large_err)]
async fn minisign_of(
    http: &HttpSource,
    api: &reqwest::Client,
) -> Result<Option<MinisignCheck>, Refusal> {
    let Some(Signature::Minisign { url, public_key }) = &http.signature else {
        return Ok(None);
    };
    let key = MinisignKey::parse(public_key).map_err(|e| Judged::Signature {
        url: url.clone(),
        detail: e.to_string(),
    })?;
    let sig = channel::fetch_small_text(api, url, &RetryPolicy::default())
        .await
        .map_err(|e| Judged::Facts(format!("cannot fetch the signature: {e}")))?;
    Ok(Some(MinisignCheck::new(key, &sig, url).map_err(|e| {
        Judged::Signature {
            url: http.url.clone(),
            detail: e.to_string(),
        }
    })?))
}

/// What goes into the manifest: the source checksum in the algorithm the manifest writes it in
/// (none for a checksum list, which stays), and the published checksum when the manifest has one
/// or the download is decompressed.
#[allow(clippy::result_large_err)]
fn github_release<'l>(
    listings: &'l Listings,
    image: &Image,
    version: &str,
) -> Option<&'l GithubRelease> {
    match listings.for_image(image)?.1 {
        Ok(Listing::Github(releases)) => releases.iter().find(|r| r.tag_name == version),
        _ => None,
    }
}

/// What the vendor says about `version` before any byte is downloaded: its checksum list (and
/// `version.yaml`), GitHub's asset digest and size, the factory's Content-Length, the notes.
/// Long on purpose: one block per channel, in the order docs/sources.md describes them.
#[allow(clippy::result_large_err)]
async fn facts(
    track: &Track,
    http: &HttpSource,
    version: &str,
    release: Option<&GithubRelease>,
    api: &reqwest::Client,
) -> Result<Facts, Refusal> {
    let policy = RetryPolicy::default();
    let url = &http.url;
    let file = file_name(url).to_string();
    let mut facts = Facts {
        notes: release
            .and_then(|r| r.body.clone())
            .filter(|b| !b.trim().is_empty()),
        release_url: release.and_then(|r| r.html_url.clone()),
        ..Facts::default()
    };
    let asset = release.and_then(|r| r.asset(&file));
    match &track.channel {
        Channel::Talos { .. } => {
            facts.head_length = channel::head_length(api, url, &policy)
                .await
                .map_err(|e| Judged::Facts(format!("the factory does not serve {url}: {e}")))?;
        }
        Channel::Github { repository, .. } => {
            let asset = asset.ok_or_else(|| {
                Judged::Facts(format!(
                    "release {version} of {repository} has no asset `{file}`"
                ))
            })?;
            // The URL comes from the vendor's data, never from a guess: the manifest's
            // template must name the asset the release lists.
            if asset.browser_download_url != *url {
                return Err(Judged::Facts(format!(
                    "the manifest's URL for {version} is {url}, but the release lists the asset at {}",
                    asset.browser_download_url
                ))
                .into());
            }
            if let Some(Signature::Minisign { url: sig, .. }) = &http.signature {
                let sig_file = file_name(sig);
                match release.and_then(|r| r.asset(sig_file)) {
                    Some(a) if a.browser_download_url == *sig => {}
                    _ => {
                        return Err(Judged::Facts(format!(
                            "release {version} of {repository} lists no signature at {sig}"
                        ))
                        .into())
                    }
                }
            }
        }
        Channel::Harvester { .. } => {
            let folder = track.folder_for(version).unwrap_or_default();
            let doc = channel::harvester_version(api, &folder, &policy)
                .await
                .map_err(|e| Judged::Facts(e.to_string()))?;
            if doc.iso_url == *url {
                facts.version_yaml =
                    Some((format!("{}version.yaml", folder), doc.iso_checksum.clone()));
            }
            let list_url = track
                .checksum_list_for(version)
                .unwrap_or_else(|| format!("{folder}harvester-{version}-amd64.sha512"));
            let list = channel::fetch_small_text(api, &list_url, &policy)
                .await
                .map_err(|e| Judged::Facts(format!("cannot fetch the checksum list: {e}")))?;
            let listed = labctl_transfer::source::checksum_list::find(&list, &list_url, &file)
                .map_err(|e| Judged::Facts(e.to_string()))?;
            facts.listed = Some((list_url, file.clone(), listed));
        }
    }
    if !matches!(track.channel, Channel::Harvester { .. }) {
        if let SourceChecksum::List { url: list_url } = &http.checksum {
            let list = channel::fetch_small_text(api, list_url, &policy)
                .await
                .map_err(|e| Judged::Facts(format!("cannot fetch the checksum list: {e}")))?;
            let listed = labctl_transfer::source::checksum_list::find(&list, list_url, &file)
                .map_err(|e| Judged::Facts(e.to_string()))?;
            facts.listed = Some((list_url.clone(), file.clone(), listed));
        }
    }
    if let Some(asset) = asset {
        facts.github = Some((asset.name.clone(), asset.checksum(), asset.size));
    }
    Ok(facts)
}

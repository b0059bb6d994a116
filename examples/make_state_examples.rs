//! Regenerates the example stores in `state-examples/` from `images/images.yaml`.
//!
//! Run after changing the manifest or the Packer template:
//! `cargo run --example make_state_examples`. The objects are small stand-ins (the real images
//! are gigabytes); their records and metadata say what the real ones would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use labctl::checksum::Checksum;
use labctl::consumer_index;
use labctl::manifest::{self, Compression, Rules};
use labctl::spec::{NormalizedSpec, SpecChecksum, SpecSource};
use labctl::state::record::{new_record, to_json};
use labctl::store::fs::FsStore;
use labctl::store::{PutOptions, Store, META_CHECKSUM, META_FINGERPRINT};

const UPLOADED_AT: &str = "2026-11-20T08:00:00Z";

fn placeholder(algorithm: &str, n: u8) -> Checksum {
    let len = if algorithm == "sha256" { 64 } else { 128 };
    format!("{algorithm}:{}{:02x}", "0".repeat(len - 2), n)
        .parse()
        .unwrap()
}

fn stand_in(name: &str) -> Bytes {
    Bytes::from(format!(
        "stand-in for {name}: example stores keep small objects, their records describe the real image\n"
    ))
}

/// Publishes `spec` the way apply does: the object with its metadata, then the record.
async fn publish(
    store: &FsStore,
    spec: &NormalizedSpec,
    checksum: Checksum,
    deps: BTreeMap<String, Checksum>,
) -> Checksum {
    let body = stand_in(&spec.name);
    let mut record = new_record(
        spec,
        checksum.clone(),
        body.len() as u64,
        deps,
        UPLOADED_AT.into(),
    );
    record.ci_run = None;
    record.labctl_version = "0.1.0".into();
    if record.sha256.is_none() {
        // The real image's sha256 is unknown here; apply computes it beside the sha512.
        let n = spec.name.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        record.sha256 = Some(placeholder("sha256", n));
    }
    let meta = BTreeMap::from([
        (META_CHECKSUM.to_string(), record.checksum.to_string()),
        (META_FINGERPRINT.to_string(), record.fingerprint.to_string()),
    ]);
    store
        .put(
            &record.key,
            body,
            PutOptions {
                user_metadata: meta,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .put(
            &manifest::record_key(&spec.destination),
            Bytes::from(to_json(&record)),
            PutOptions::default(),
        )
        .await
        .unwrap();
    checksum
}

/// The checksum an image publishes: pinned; for a build the stand-in's own; for a download
/// whose checksum comes from a list (unreachable here) a placeholder.
fn output_checksum(spec: &NormalizedSpec) -> Checksum {
    match (&spec.expected, &spec.source) {
        (Some(e), _) => e.clone(),
        (None, SpecSource::Packer { .. }) => Checksum::sha256(&stand_in(&spec.name)),
        (None, SpecSource::Http { .. }) => {
            let n = spec.name.bytes().fold(0u8, |a, b| a.wrapping_add(b));
            placeholder("sha512", n)
        }
    }
}

/// The consumer index apply writes after the records, with a fixed generation time so that
/// regenerating the examples changes nothing.
async fn write_index(store: &FsStore) {
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store.clone());
    let actual =
        labctl::state::refresh::read(store.clone(), labctl::state::refresh::Objects::Headed)
            .await
            .unwrap();
    let entries = consumer_index::entries(&actual.records).entries;
    let sums = consumer_index::sha256sums(&entries);
    let json =
        consumer_index::to_json(&consumer_index::document(entries, UPLOADED_AT.into(), None));
    for (key, body) in [
        (consumer_index::JSON_KEY, json),
        (consumer_index::SUMS_KEY, sums.into_bytes()),
    ] {
        store
            .put(key, Bytes::from(body), PutOptions::default())
            .await
            .unwrap();
    }
}

fn reset(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name() != "README.md" {
                let p = e.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(p).unwrap();
                } else {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
    }
    std::fs::create_dir_all(dir).unwrap();
}

/// Writes every example state in turn: a script more than a function, kept in one piece so
/// that each state reads as the story it tells.
#[tokio::main]
async fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("state-examples"));
    let (m, graph) = manifest::load(&root.join("images/images.yaml"), Rules::default()).unwrap();
    let desired: Vec<NormalizedSpec> = labctl::desired::build(&m, &graph)
        .unwrap()
        .into_iter()
        .map(|d| d.spec)
        .collect();
    let spec = |name: &str| desired.iter().find(|s| s.name == name).unwrap().clone();

    // empty: nothing published yet.
    reset(&out.join("empty"));

    // in-sync: everything the manifest declares, as apply leaves it.
    let dir = out.join("in-sync");
    reset(&dir);
    let store = FsStore::new(&dir);
    let mut published: BTreeMap<String, Checksum> = BTreeMap::new();
    for s in &desired {
        let deps = s
            .depends_on
            .iter()
            .map(|d| (d.clone(), published[d].clone()))
            .collect();
        let sum = publish(&store, s, output_checksum(s), deps).await;
        published.insert(s.name.clone(), sum);
    }

    write_index(&store).await;

    // drifted: one of every kind of difference.
    let dir = out.join("drifted");
    reset(&dir);
    let store = FsStore::new(&dir);

    // Talos: the same disk, published from the factory's .raw.xz; the manifest now takes the
    // .raw.zst. The published checksum is unchanged, so only the record needs updating.
    let mut talos = spec("talos-1.9.1-metal-amd64");
    talos.source = SpecSource::Http {
        url: "https://factory.talos.dev/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/v1.9.1/metal-amd64.raw.xz".into(),
        checksum: SpecChecksum::Digest(placeholder("sha256", 0x11)),
        decompress: Some(Compression::Xz),
        signature: None,
    };
    publish(&store, &talos, output_checksum(&talos), BTreeMap::new()).await;

    // VyOS ISO: the bucket holds an older nightly at the same key; the manifest moved on.
    let mut old_iso = spec("vyos-iso");
    let SpecSource::Http { signature, .. } = old_iso.source.clone() else {
        unreachable!()
    };
    old_iso.source = SpecSource::Http {
        url: "https://github.com/vyos/vyos-nightly-build/releases/download/2024.12.30-0021-rolling/vyos-2024.12.30-0021-rolling-generic-amd64.iso".into(),
        checksum: SpecChecksum::Digest(placeholder("sha256", 0x13)),
        decompress: None,
        signature,
    };
    old_iso.expected = Some(placeholder("sha256", 0x13));
    let old_iso_sum = publish(
        &store,
        &old_iso,
        placeholder("sha256", 0x13),
        BTreeMap::new(),
    )
    .await;

    // The gateway was built from that older ISO.
    let gw = spec("vyos-gateway");
    publish(
        &store,
        &gw,
        output_checksum(&gw),
        BTreeMap::from([("vyos-iso".to_string(), old_iso_sum)]),
    )
    .await;

    // Harvester ISO: uploaded by the earlier sync tool, same bytes the manifest wants.
    let iso = spec("harvester-1.4.0-iso");
    let body = stand_in(&iso.name);
    store
        .put(
            &manifest::object_key(&iso.destination),
            body.clone(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    // The digest the earlier tool recorded: what the release's sha512 list says of the ISO.
    let legacy = serde_json::json!({
        "name": iso.name,
        "checksum": output_checksum(&iso).hex(),
        "size": body.len(),
        "uploadedAt": "2025-12-20T14:03:11Z",
        "source": {"type": "http", "url": "https://releases.rancher.com/harvester/v1.4.0/harvester-v1.4.0-amd64.iso"},
    });
    store
        .put(
            &manifest::record_key(&iso.destination),
            Bytes::from(serde_json::to_vec_pretty(&legacy).unwrap()),
            PutOptions::default(),
        )
        .await
        .unwrap();

    // Harvester kernel: exactly as the manifest says.
    let vmlinuz = spec("harvester-1.4.0-vmlinuz");
    publish(&store, &vmlinuz, output_checksum(&vmlinuz), BTreeMap::new()).await;

    // Harvester initrd: not published yet (nothing to write).

    // Harvester rootfs: published, but the object has since disappeared from the bucket.
    let rootfs = spec("harvester-1.4.0-rootfs");
    publish(&store, &rootfs, output_checksum(&rootfs), BTreeMap::new()).await;
    store
        .delete(&manifest::object_key(&rootfs.destination))
        .await
        .unwrap();

    // An image that left the manifest.
    let mut old_talos = spec("talos-1.9.1-metal-amd64");
    old_talos.name = "talos-1.8.4-metal-amd64".into();
    old_talos.destination = "talos/talos-1.8.4-metal-amd64.raw".into();
    old_talos.source = SpecSource::Http {
        url: "https://factory.talos.dev/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/v1.8.4/metal-amd64.raw.xz".into(),
        checksum: SpecChecksum::Digest(placeholder("sha256", 0x21)),
        decompress: Some(Compression::Xz),
        signature: None,
    };
    old_talos.expected = Some(placeholder("sha256", 0x22));
    publish(
        &store,
        &old_talos,
        placeholder("sha256", 0x22),
        BTreeMap::new(),
    )
    .await;

    println!("wrote example stores under {}", out.display());
}

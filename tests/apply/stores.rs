//! The store conformance suite: every store operation labctl uses, through the `Store` trait,
//! against every backend — s3s-fs, moto, Ceph RGW, Garage and the filesystem store. Where a
//! backend is known to differ (Garage ignores `If-None-Match`), the test says so and checks that
//! difference, so a store that changes is noticed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use labctl::store::{get_bytes, list_all, PutMode, PutOptions, Store, StoreError};

use crate::harness::*;

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod conformance_s3s_fs { $( #[test] fn $case() { super::$case(super::Backend::S3sFs) } )* }
        mod conformance_moto { $( #[test] fn $case() { super::$case(super::Backend::Moto) } )* }
        mod conformance_fs { $( #[test] fn $case() { super::$case(super::Backend::Fs) } )* }
        mod conformance_ceph { $( #[test] fn $case() { super::$case(super::Backend::Ceph) } )* }
        mod conformance_garage { $( #[test] fn $case() { super::$case(super::Backend::Garage) } )* }
    };
}

on_every_store!(
    objects_round_trip_with_user_metadata,
    listing_follows_every_page,
    conditional_create_is_enforced_where_the_store_can,
    multipart_uploads_complete_abort_and_list,
    server_side_copy_both_ways,
    conditional_delete_keeps_a_rewritten_object,
    deleting_many_keys_at_once,
    doctors_probes_find_what_this_suite_knows,
);

const MIB: usize = 1024 * 1024;

/// The lab's store with small listing pages, a low single-copy limit and small delete batches,
/// so pagination, the part-by-part copy and batch deletes run on a few small objects.
fn store(lab: &Lab) -> Arc<dyn Store> {
    match lab.backend {
        Backend::Fs => {
            Arc::new(labctl::store::fs::FsStore::new(lab.dir().join("store")).with_page_size(2))
        }
        _ => Arc::new(
            lab.s3_store()
                .with_page_size(2)
                .with_single_copy_limit(5 * MIB as u64)
                .with_delete_batch(2),
        ),
    }
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn objects_round_trip_with_user_metadata(backend: Backend) {
    let lab = Lab::new(backend);
    let store = store(&lab);
    lab.runtime.block_on(async {
        assert!(store.head("images/a/none.img").await.unwrap().is_none());
        assert!(store.get("images/a/none.img").await.unwrap().is_none());
        let m = meta(&[
            ("labctl-checksum", "sha256:abc"),
            ("labctl-fingerprint", "f"),
        ]);
        let put = store
            .put(
                "images/a/one.img",
                Bytes::from_static(b"hello"),
                PutOptions {
                    user_metadata: m.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let head = store.head("images/a/one.img").await.unwrap().unwrap();
        assert_eq!((head.size, &head.user_metadata), (5, &m));
        assert_eq!(head.etag, put.etag, "PUT and HEAD agree on the ETag");
        let (got, bytes) = get_bytes(store.as_ref(), "images/a/one.img", 1024)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(got.user_metadata, m);
        // Metadata replaced in place; the bytes stay.
        let m2 = meta(&[
            ("labctl-checksum", "sha256:abc"),
            ("labctl-fingerprint", "g"),
        ]);
        let updated = store
            .set_metadata("images/a/one.img", m2.clone())
            .await
            .unwrap();
        assert_eq!(updated.user_metadata, m2);
        let (_, again) = get_bytes(store.as_ref(), "images/a/one.img", 1024)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, b"hello");
        store.delete("images/a/one.img").await.unwrap();
        store.delete("images/a/one.img").await.unwrap(); // a missing key is not an error
        assert!(store.head("images/a/one.img").await.unwrap().is_none());
    });
}

fn listing_follows_every_page(backend: Backend) {
    let lab = Lab::new(backend);
    let store = store(&lab);
    lab.runtime.block_on(async {
        for i in 0..7 {
            store
                .put(
                    &format!("metadata/p/{i}.json"),
                    Bytes::from(vec![b'x'; i + 1]),
                    PutOptions::default(),
                )
                .await
                .unwrap();
        }
        store
            .put(
                "images/elsewhere",
                Bytes::from_static(b"-"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let first = store.list_page("metadata/", None).await.unwrap();
        assert_eq!(first.objects.len(), 2, "pages of two");
        assert!(first.next.is_some());
        let etags = labctl::state::refresh::record_etags(store.as_ref())
            .await
            .unwrap();
        assert_eq!(etags.len(), 7);
        assert!(etags.values().all(|e| !e.is_empty()), "{etags:?}");
        let all = list_all(store.as_ref(), "metadata/").await.unwrap();
        let keys: Vec<(String, u64)> = all.iter().map(|o| (o.key.clone(), o.size)).collect();
        let expected: Vec<(String, u64)> = (0..7)
            .map(|i| (format!("metadata/p/{i}.json"), i as u64 + 1))
            .collect();
        assert_eq!(keys, expected, "every key once, in order, with its size");
        if backend == Backend::S3sFs {
            // s3s-fs lists no ETags: labctl HEADs what it needs (record_etags), so a saved
            // plan's stale check still sees a changed record.
            assert!(
                all.iter().all(|o| o.etag.is_empty()),
                "s3s-fs lists ETags now"
            );
        } else {
            assert!(all.iter().all(|o| !o.etag.is_empty()), "{backend:?}");
        }
    });
}

fn conditional_create_is_enforced_where_the_store_can(backend: Backend) {
    let lab = Lab::new(backend);
    let store = store(&lab);
    let create = PutOptions {
        mode: PutMode::CreateOnly,
        ..Default::default()
    };
    lab.runtime.block_on(async {
        store
            .put(".labctl/probe", Bytes::from_static(b"1"), create.clone())
            .await
            .unwrap();
        let second = store
            .put(".labctl/probe", Bytes::from_static(b"2"), create)
            .await;
        let (_, now) = get_bytes(store.as_ref(), ".labctl/probe", 16)
            .await
            .unwrap()
            .unwrap();
        if backend == Backend::Garage {
            // Garage ignores If-None-Match and overwrites: why apply refuses its lock there.
            assert!(second.is_ok(), "{second:?}");
            assert_eq!(now, b"2");
        } else {
            assert!(
                matches!(second, Err(StoreError::AlreadyExists { .. })),
                "{second:?}"
            );
            assert_eq!(now, b"1", "the first write stands");
        }
    });
}

fn multipart_uploads_complete_abort_and_list(backend: Backend) {
    let lab = Lab::new(backend);
    let store = store(&lab);
    lab.runtime.block_on(async {
        let first = Bytes::from(vec![b'a'; 5 * MIB]);
        let m = meta(&[("labctl-checksum", "sha256:x")]);
        let id = store
            .create_multipart(
                "images/m/big.img",
                PutOptions {
                    user_metadata: m.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let p1 = store
            .upload_part("images/m/big.img", &id, 1, first.clone())
            .await
            .unwrap();
        let p2 = store
            .upload_part("images/m/big.img", &id, 2, Bytes::from_static(b"end"))
            .await
            .unwrap();
        assert!(
            store.head("images/m/big.img").await.unwrap().is_none(),
            "nothing is visible before completion"
        );
        if let Some(uploads) = store.list_uploads("images/").await.unwrap() {
            assert!(uploads.contains(&("images/m/big.img".to_string(), id.clone())));
        } else {
            assert_eq!(backend, Backend::S3sFs, "only s3s-fs cannot list uploads");
        }
        let done = store
            .complete_multipart("images/m/big.img", &id, vec![p1, p2])
            .await
            .unwrap();
        assert_eq!(done.size, 5 * MIB as u64 + 3);
        assert_eq!(
            store
                .head("images/m/big.img")
                .await
                .unwrap()
                .unwrap()
                .user_metadata,
            m,
            "the metadata given at creation is the object's"
        );

        let id = store
            .create_multipart("images/m/aborted.img", PutOptions::default())
            .await
            .unwrap();
        store
            .upload_part("images/m/aborted.img", &id, 1, first)
            .await
            .unwrap();
        store
            .abort_multipart("images/m/aborted.img", &id)
            .await
            .unwrap();
        assert!(store.head("images/m/aborted.img").await.unwrap().is_none());
        if let Some(uploads) = store.list_uploads("images/").await.unwrap() {
            assert!(uploads.is_empty(), "{uploads:?}");
        }
    });
}

fn server_side_copy_both_ways(backend: Backend) {
    let lab = Lab::new(backend);
    let store = store(&lab);
    lab.runtime.block_on(async {
        let m = meta(&[("labctl-checksum", "sha256:c")]);
        for (name, size) in [("small", 1000), ("large", 12 * MIB + 7)] {
            let body = image_bytes(size as u64, size);
            let from = format!("images/c/{name}.img");
            let put = store
                .put(
                    &from,
                    Bytes::from(body.clone()),
                    PutOptions {
                        user_metadata: m.clone(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let to = format!("history/c/{name}.img/copy");
            // Only while the source still has the ETag that was checked, and without asking
            // the store about the source again.
            let checked = store.head(&from).await.unwrap().unwrap();
            assert_eq!(checked.etag, put.etag);
            let copied = store.copy(&from, &to, None, Some(&checked)).await.unwrap();
            assert_eq!(copied.size, size as u64, "{name}");
            assert_eq!(
                copied.user_metadata, m,
                "{name}: the copy keeps the metadata"
            );
            let there = store.head(&to).await.unwrap().unwrap();
            assert_eq!(
                (&copied.etag, copied.size, &copied.user_metadata),
                (&there.etag, there.size, &there.user_metadata),
                "{name}: the copy is described as the store describes it"
            );
            let (_, bytes) = get_bytes(store.as_ref(), &to, 1 << 30)
                .await
                .unwrap()
                .unwrap();
            assert!(bytes == body, "{name}: the same bytes");
            // Unchecked: the store is asked about the source first.
            let again = format!("history/c/{name}.img/again");
            let unchecked = store.copy(&from, &again, None, None).await.unwrap();
            assert_eq!(unchecked.size, size as u64, "{name}");
            let stale = labctl::store::ObjectMeta {
                etag: "\"not-the-etag\"".into(),
                ..checked.clone()
            };
            let moved = format!("history/c/{name}.img/moved");
            let refused = store.copy(&from, &moved, None, Some(&stale)).await.is_err();
            // Moto and Ceph RGW copy whatever x-amz-copy-source-if-match says (doctor reports
            // it): there, the HEAD labctl makes right before each copy is the only guard. A
            // copy in parts asks the store about its source once more, whatever the store.
            let enforced = name == "large" || !matches!(backend, Backend::Moto | Backend::Ceph);
            assert_eq!(
                refused, enforced,
                "{backend:?} {name}: a moved source is not copied"
            );
        }
    });
}

fn conditional_delete_keeps_a_rewritten_object(backend: Backend) {
    let lab = Lab::new(backend);
    let store = store(&lab);
    lab.runtime.block_on(async {
        let first = store
            .put(
                ".labctl/lock.json",
                Bytes::from_static(b"ours"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let second = store
            .put(
                ".labctl/lock.json",
                Bytes::from_static(b"theirs!"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        assert_ne!(first.etag, second.etag);
        let deleted = store
            .delete_if(".labctl/lock.json", &first.etag)
            .await
            .unwrap();
        let left = store.head(".labctl/lock.json").await.unwrap();
        // Moto and the directory store honour If-Match on DELETE; s3s-fs, Garage and Ceph RGW
        // (Pacific) ignore it, and labctl's read-before-delete is then the only guard. Checked
        // both ways, so a store that changes shows here.
        let honours = matches!(backend, Backend::Moto | Backend::Fs);
        assert_eq!(!deleted, honours, "{backend:?}: deleted={deleted}");
        assert_eq!(left.is_some(), honours, "{backend:?}");
        assert!(store
            .delete_if(".labctl/lock.json", &second.etag)
            .await
            .unwrap());
        assert!(store.head(".labctl/lock.json").await.unwrap().is_none());
    });
}

fn deleting_many_keys_at_once(backend: Backend) {
    let lab = Lab::new(backend);
    let store = store(&lab);
    lab.runtime.block_on(async {
        let keys: Vec<String> = (0..5)
            .map(|i| format!(".labctl/blobs/sha256/{i}"))
            .collect();
        for key in keys.iter().chain([&"images/kept.img".to_string()]) {
            store
                .put(key, Bytes::from_static(b"x"), PutOptions::default())
                .await
                .unwrap();
        }
        // Three batches of two; a missing key counts as deleted.
        let mut asked = keys.clone();
        asked.push(".labctl/blobs/sha256/missing".into());
        let failed = store.delete_many(asked).await;
        assert!(failed.is_empty(), "{backend:?}: {failed:?}");
        assert!(
            list_all(store.as_ref(), ".labctl/blobs/")
                .await
                .unwrap()
                .is_empty(),
            "{backend:?}"
        );
        assert!(store.head("images/kept.img").await.unwrap().is_some());
        assert!(store.delete_many(Vec::new()).await.is_empty());
    });
}

/// A store that refuses DeleteObjects (an older S3-compatible service, or one that wants a
/// Content-MD5 the SDK does not send) gets one DELETE a key instead, and is not asked again.
#[test]
fn deletes_go_one_by_one_where_the_store_refuses_the_batch() {
    let lab = Lab::new(Backend::S3sFs);
    let proxy = crate::support::proxy::Proxy::start(&lab.server.as_ref().unwrap().endpoint);
    let server = lab.server.as_ref().unwrap();
    let settings = labctl::store::s3::S3Settings {
        bucket: crate::support::servers::BUCKET.into(),
        prefix: None,
        endpoint: Some(proxy.endpoint.clone()),
        region: server.region.clone(),
    };
    let credentials = Some((server.access_key.clone(), server.secret_key.clone()));
    let store = lab
        .runtime
        .block_on(labctl::store::s3::S3Store::connect_with(
            settings,
            credentials,
        ))
        .unwrap()
        .with_delete_batch(1);
    proxy.refuse("?delete", 100, 501, "NotImplemented");
    lab.runtime.block_on(async {
        let keys: Vec<String> = (0..8)
            .map(|i| format!(".labctl/blobs/sha256/{i}"))
            .collect();
        for key in &keys {
            store
                .put(key, Bytes::from_static(b"x"), PutOptions::default())
                .await
                .unwrap();
        }
        let failed = store.delete_many(keys).await;
        assert!(failed.is_empty(), "{failed:?}");
        assert!(list_all(&store, ".labctl/blobs/").await.unwrap().is_empty());
    });
    let requests = proxy.requests();
    let batches = requests.iter().filter(|r| r.contains("?delete")).count();
    let single = requests.iter().filter(|r| r.starts_with("DELETE ")).count();
    // Eight batches of one, a few at once: those started after the first refusal are not sent.
    assert_eq!(single, 8, "{requests:?}");
    assert!((1..8).contains(&batches), "{requests:?}");
}

/// Garage, the store many homelabs run, ignores `If-None-Match`: doctor says so, apply refuses to
/// rely on its lock, and the documented flow — one apply at a time, `--lock=false` — works.
#[test]
fn garage_is_refused_for_the_lock_and_applies_with_lock_false() {
    let lab = Lab::new(Backend::Garage);
    let body = image_bytes(60, 1000);
    lab.serve(
        "/a.img",
        body.clone(),
        crate::support::fixture::Faults::default(),
    );
    lab.write_manifest(&[Entry::raw("a", "/a.img", &body)]);

    let doctor = lab.labctl(&["doctor"]);
    assert_eq!(doctor.code, 1, "{}", doctor.output());
    assert!(
        doctor
            .stdout
            .contains("✗ conditional create (If-None-Match: *): NOT enforced"),
        "{}",
        doctor.output()
    );
    assert!(
        doctor.stdout.contains("--lock=false"),
        "{}",
        doctor.output()
    );

    let locked = lab.labctl(&["apply", "--auto-approve", "--lock=true"]);
    assert_eq!(locked.code, 1, "{}", locked.output());
    assert!(
        locked
            .stderr
            .contains("it does not enforce `If-None-Match: *`"),
        "{}",
        locked.output()
    );
    assert!(lab.object("test/a.img").is_none(), "nothing was published");
    assert!(
        lab.head(".labctl/lock.json").is_none(),
        "the lock it could not trust is removed"
    );

    let unlocked = lab.labctl(&["apply", "--auto-approve", "--lock=false"]);
    assert_eq!(unlocked.code, 0, "{}", unlocked.output());
    assert!(
        unlocked.stderr.contains("running without the store lock"),
        "{}",
        unlocked.output()
    );
    assert!(lab.object("test/a.img").unwrap() == body);
}

/// A store named outside the manifest takes nothing from the manifest's `spec.store`: its
/// region (here one Garage would refuse the signature for) and endpoint describe another
/// bucket. With the manifest's own store, E2_ENDPOINT and E2_REGION override it.
#[test]
fn a_store_named_outside_the_manifest_ignores_its_endpoint_and_region() {
    let lab = Lab::new(Backend::Garage);
    let body = image_bytes(61, 1000);
    lab.serve(
        "/a.img",
        body.clone(),
        crate::support::fixture::Faults::default(),
    );
    let manifest = |store: &str| {
        format!(
            "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  store:\n{store}  images:\n    - name: a\n      source: {{type: http, url: \"{}\", checksum: \"{}\"}}\n      destination: test/a.img\n",
            lab.fixture.url("/a.img"),
            sha256(&body)
        )
    };
    // The manifest describes another bucket, elsewhere, in another region.
    lab.write_manifest_text(&manifest(
        "    s3: {bucket: elsewhere, endpoint: \"https://s3.elsewhere.example\", region: nowhere-1}\n",
    ));
    // --store s3://lab-images (the harness passes it) with E2_ENDPOINT and E2_REGION=garage.
    let plan = lab.labctl(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.output());
    assert!(plan.stdout.contains("+ a"), "{}", plan.output());

    // The manifest's own store: E2_ENDPOINT and E2_REGION override its endpoint and region.
    lab.write_manifest_text(&manifest(
        "    s3: {bucket: lab-images, endpoint: \"https://s3.elsewhere.example\", region: nowhere-1}\n",
    ));
    let own = lab.labctl_no_store(&["plan"]);
    assert_eq!(own.code, 0, "{}", own.output());
    assert!(own.stdout.contains("+ a"), "{}", own.output());
}

/// `labctl doctor`'s probes, through the same trait, find on each backend what the cases above
/// establish: everything holds except the limits each backend is known for, and they leave
/// nothing behind.
fn doctors_probes_find_what_this_suite_knows(backend: Backend) {
    use labctl::store::probe::{self, Check, Verdict};
    let lab = Lab::new(backend);
    let store = store(&lab);
    let mut findings = Vec::new();
    lab.runtime
        .block_on(probe::run(&store, "suite", |f| findings.push(f)));
    // Garage ignores If-None-Match; moto and Ceph RGW copy whatever
    // x-amz-copy-source-if-match says; s3s-fs, Garage and Ceph RGW delete whatever If-Match
    // says (`conditional_delete_keeps_a_rewritten_object`).
    let create_enforced = backend != Backend::Garage;
    let copy_enforced = !matches!(backend, Backend::Moto | Backend::Ceph);
    let delete_enforced = !matches!(backend, Backend::S3sFs | Backend::Garage | Backend::Ceph);
    let checks: Vec<Check> = findings.iter().map(|f| f.check).collect();
    assert_eq!(
        checks,
        [
            Check::WriteRead,
            Check::Multipart,
            Check::AbortMultipart,
            Check::ConditionalCreate,
            Check::CopyWithMetadata,
            Check::CopyInParts,
            Check::ConditionalCopy,
            Check::ConditionalDelete,
            Check::StrandedUploads,
        ]
    );
    for finding in &findings {
        let expected = match finding.check {
            Check::ConditionalCreate if !create_enforced => "fails",
            Check::ConditionalCopy if !copy_enforced => "lacks",
            Check::ConditionalDelete if !delete_enforced => "lacks",
            _ => "holds",
        };
        let got = match &finding.verdict {
            Verdict::Holds(_) => "holds",
            Verdict::Lacks(_) => "lacks",
            Verdict::Fails(_) => "fails",
        };
        assert_eq!(got, expected, "{:?}: {:?}", finding.check, finding.verdict);
    }
    let left = lab
        .runtime
        .block_on(list_all(store.as_ref(), probe::PROBE_PREFIX))
        .unwrap();
    assert!(left.is_empty(), "the probes leave nothing behind: {left:?}");
}

//! The upload stage: parts go up with a bounded number in flight; nothing is completed here.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::budget::Held;
use labctl_store::pending::PendingUpload;
use labctl_store::{ObjectMeta, PutOptions, Store, StoreError, UploadedPart};

pub struct Part {
    pub number: u32,
    pub data: Bytes,
    /// The end of the stream; an empty last part after full ones only marks the end.
    pub last: bool,
    /// Its bytes of the run's memory budget, given back with the part.
    pub held: Option<Held>,
}

/// What was uploaded, not yet visible: made visible by [`Uploaded::publish`] after
/// verification, or discarded. Dropped without either, a multipart upload is still aborted (by
/// its [`PendingUpload`]).
pub enum Uploaded {
    /// Everything fit in one part: PUT it (after verification) instead of a multipart upload.
    /// Its bytes stay held against the budget until then.
    Small(Bytes, Option<Held>),
    Multipart {
        upload: PendingUpload,
        parts: Vec<UploadedPart>,
    },
}

impl Uploaded {
    /// Makes the object visible: completes the multipart upload, or PUTs the single part.
    pub async fn publish(
        self,
        store: &Arc<dyn Store>,
        key: &str,
        options: PutOptions,
    ) -> Result<ObjectMeta, StoreError> {
        match self {
            Uploaded::Small(bytes, _held) => store.put(key, bytes, options).await,
            Uploaded::Multipart { upload, parts } => upload.complete(parts).await,
        }
    }

    /// Verification failed: nothing becomes visible, and the parts are aborted now (a failed
    /// abort is reported; the next apply aborts the upload).
    pub async fn discard(self) {
        if let Uploaded::Multipart { upload, .. } = self {
            if let Err(failed) = upload.abort().await {
                failed.report();
            }
        }
    }
}

/// Uploads parts as they arrive. A multipart upload it started is aborted before an error is
/// returned.
pub async fn run(
    store: Arc<dyn Store>,
    key: String,
    options: PutOptions,
    rx: mpsc::Receiver<Part>,
    in_flight: usize,
) -> Result<Uploaded, StoreError> {
    let mut upload: Option<PendingUpload> = None;
    match upload_parts(&store, &key, &options, rx, in_flight, &mut upload).await {
        Ok(Collected::Small(small, held)) => Ok(Uploaded::Small(small, held)),
        Ok(Collected::Parts(parts)) => match upload {
            Some(upload) => Ok(Uploaded::Multipart { upload, parts }),
            // The decoder stopped before sending anything; its error explains why.
            None => Ok(Uploaded::Small(Bytes::new(), None)),
        },
        Err(e) => {
            if let Some(upload) = upload {
                if let Err(failed) = upload.abort().await {
                    failed.report();
                }
            }
            Err(e)
        }
    }
}

/// Starts the multipart upload in `upload` when there is more than one part, so that [`run`]
/// holds it whatever happens here.
async fn upload_parts(
    store: &Arc<dyn Store>,
    key: &str,
    options: &PutOptions,
    mut rx: mpsc::Receiver<Part>,
    in_flight: usize,
    upload: &mut Option<PendingUpload>,
) -> Result<Collected, StoreError> {
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut tasks: JoinSet<Result<UploadedPart, StoreError>> = JoinSet::new();
    let mut parts = Vec::new();
    loop {
        // Take a slot before receiving, so the decoder waits while all slots are busy: that is
        // what bounds memory.
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let Some(part) = rx.recv().await else {
            break;
        };
        if part.number == 1 && part.last {
            return Ok(Collected::Small(part.data, part.held));
        }
        if part.last && part.data.is_empty() {
            break;
        }
        if upload.is_none() {
            *upload = Some(PendingUpload::start(store.clone(), key, options.clone()).await?);
        }
        let id = upload.as_ref().expect("started above").id().to_string();
        let (store, key) = (store.clone(), key.to_string());
        tasks.spawn(async move {
            let result = store.upload_part(&key, &id, part.number, part.data).await;
            drop((permit, part.held));
            result
        });
        while let Some(done) = tasks.try_join_next() {
            parts.push(done.expect("upload task panicked")?);
        }
        if part.last {
            break;
        }
    }
    while let Some(done) = tasks.join_next().await {
        parts.push(done.expect("upload task panicked")?);
    }
    Ok(Collected::Parts(parts))
}

enum Collected {
    /// One small part: no multipart upload was started.
    Small(Bytes, Option<Held>),
    /// The parts uploaded into the pending upload (none if the stream stopped first).
    Parts(Vec<UploadedPart>),
}

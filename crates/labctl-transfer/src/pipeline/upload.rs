//! The upload stage: parts go up with a bounded number in flight; nothing is completed here.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use labctl_store::{PutOptions, Store, StoreError, UploadedPart};

pub struct Part {
    pub number: u32,
    pub data: Bytes,
    /// The end of the stream; an empty last part after full ones only marks the end.
    pub last: bool,
}

pub enum Uploaded {
    /// Everything fit in one part: PUT it (after verification) instead of a multipart upload.
    Small(Bytes),
    Multipart {
        upload_id: String,
        parts: Vec<UploadedPart>,
    },
}

/// Uploads parts as they arrive. The id of a started multipart upload is published in
/// `upload_id` at once, so the caller can abort it whatever happens here.
pub async fn run(
    store: Arc<dyn Store>,
    key: String,
    options: PutOptions,
    mut rx: mpsc::Receiver<Part>,
    in_flight: usize,
    upload_id: Arc<Mutex<Option<String>>>,
) -> Result<Uploaded, StoreError> {
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut tasks: JoinSet<Result<UploadedPart, StoreError>> = JoinSet::new();
    let mut parts = Vec::new();
    let mut id: Option<String> = None;
    loop {
        // Take a slot before receiving, so the decoder waits while all slots are busy: that is
        // what bounds memory.
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let Some(part) = rx.recv().await else {
            break;
        };
        if part.number == 1 && part.last {
            return Ok(Uploaded::Small(part.data));
        }
        if part.last && part.data.is_empty() {
            break;
        }
        let upload = match &id {
            Some(id) => id.clone(),
            None => {
                let new = store.create_multipart(&key, options.clone()).await?;
                *upload_id.lock().unwrap() = Some(new.clone());
                id = Some(new.clone());
                new
            }
        };
        let (store, key) = (store.clone(), key.clone());
        tasks.spawn(async move {
            let result = store
                .upload_part(&key, &upload, part.number, part.data)
                .await;
            drop(permit);
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
    match id {
        Some(upload_id) => Ok(Uploaded::Multipart { upload_id, parts }),
        // The decoder stopped before sending anything; its error explains why.
        None => Ok(Uploaded::Small(Bytes::new())),
    }
}

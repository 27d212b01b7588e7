#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

//! The storage half of the upload conversation, against the real S3 server:
//! presigned single and multipart uploads by someone without credentials, server-side
//! verification, and what happens to wrong bytes.

use std::time::Duration;

use aether_artifact::Digest;
use aether_e2e::{http, storage::StorageSettings};
use aether_storage::{StorageError, plan_parts};

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
#[ignore = "needs storage: run `make e2e`"]
async fn presigned_put_then_verify_and_wrong_bytes_are_caught() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    let data = blob(300_000, std::process::id() as u8);
    let digest = Digest::of(&data);
    assert_eq!(storage.head(&digest).await?, None);
    assert!(matches!(
        storage.verify(&digest, data.len() as u64).await,
        Err(StorageError::NotFound(_))
    ));

    // An uploader holding only the URL.
    let url = storage
        .presign_put(&digest, data.len() as u64, Duration::from_secs(300))
        .await?;
    let (status, body) = http::put(&url, data.clone()).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(storage.head(&digest).await?, Some(data.len() as u64));
    storage.verify(&digest, data.len() as u64).await?;

    // The same URL used for different bytes of the same length: stored, but caught.
    let mut corrupt = data.clone();
    corrupt[12_345] ^= 1;
    let (status, _) = http::put(&url, corrupt).await?;
    assert_eq!(status, 200);
    let err = storage.verify(&digest, data.len() as u64).await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch", "{err}");
    storage.delete(&digest).await?;
    assert_eq!(storage.head(&digest).await?, None);

    // A URL signed for one size does not accept another.
    let (status, _) = http::put(&url, data[..1000].to_vec()).await?;
    assert_ne!(status, 200, "a presigned URL accepted a different length");
    Ok(())
}

#[tokio::test]
#[ignore = "needs storage: run `make e2e`"]
async fn presigned_multipart_upload_is_completed_by_the_credential_holder() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    let data = blob(12 << 20, 7u8.wrapping_add(std::process::id() as u8));
    let digest = Digest::of(&data);
    let upload_id = storage.start_multipart(&digest).await?;
    let plans = plan_parts(data.len() as u64, 5 << 20);
    assert_eq!(plans.len(), 3);
    for part in &plans {
        let url = storage
            .presign_part(&digest, &upload_id, part, Duration::from_secs(300))
            .await?;
        let bytes = data[part.offset as usize..(part.offset + part.len) as usize].to_vec();
        let (status, body) = http::put(&url, bytes).await?;
        assert_eq!(status, 200, "part {}: {body}", part.number);
    }
    storage.complete_multipart(&digest, &upload_id).await?;
    storage.verify(&digest, data.len() as u64).await?;
    storage.delete(&digest).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs storage: run `make e2e`"]
async fn wrong_credentials_are_an_actionable_error() -> anyhow::Result<()> {
    let mut config = StorageSettings::from_env()?.config;
    config.secret_access_key = "0".repeat(64);
    let err = aether_storage::Storage::new(&config)
        .head(&Digest::of(b"anything"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "StorageUnauthorized", "{err}");
    assert!(err.to_string().contains("check the access key"), "{err}");
    Ok(())
}

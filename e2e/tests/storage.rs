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

fn namespace() -> String {
    format!("storage-test-{}", std::process::id())
}

#[tokio::test]
#[ignore = "needs storage: run `make e2e`"]
async fn a_presigned_put_stores_only_the_bytes_of_its_digest() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host().namespace(&namespace());
    let data = blob(300_000, std::process::id() as u8);
    let digest = Digest::of(&data);
    assert_eq!(storage.head(&digest).await?, None);
    assert!(matches!(
        storage.verify(&digest, data.len() as u64).await,
        Err(StorageError::NotFound(_))
    ));
    let put = storage
        .presign_put(&digest, data.len() as u64, Duration::from_secs(300))
        .await?;

    // Different bytes of the same length, through the URL: refused, nothing stored.
    let mut corrupt = data.clone();
    corrupt[12_345] ^= 1;
    assert!(
        !http::stored(&put.url, &put.headers, corrupt.clone()).await,
        "the URL stored bytes that are not its digest's"
    );
    assert_eq!(storage.head(&digest).await?, None);
    // Without the signed checksum header: refused.
    assert!(
        !http::stored(&put.url, &Default::default(), data.clone()).await,
        "the URL worked without its checksum"
    );
    // Another length: refused.
    assert!(
        !http::stored(&put.url, &put.headers, data[..1000].to_vec()).await,
        "a presigned URL accepted a different length"
    );

    // The right bytes: stored and verified; wrong ones cannot replace them.
    let (status, body) = http::put(&put.url, &put.headers, data.clone()).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(storage.head(&digest).await?, Some(data.len() as u64));
    assert!(!http::stored(&put.url, &put.headers, corrupt).await);
    storage.verify(&digest, data.len() as u64).await?;

    // Another namespace's view of the same digest is empty.
    let other = StorageSettings::from_env()?.host().namespace("someone-else");
    assert_eq!(other.head(&digest).await?, None);
    storage.delete(&digest).await?;
    assert_eq!(storage.head(&digest).await?, None);
    Ok(())
}

#[tokio::test]
#[ignore = "needs storage: run `make e2e`"]
async fn multipart_uploads_reach_the_blob_key_only_once_verified() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host().namespace(&namespace());
    let data = blob(12 << 20, 7u8.wrapping_add(std::process::id() as u8));
    let digest = Digest::of(&data);
    let upload = |bytes: Vec<u8>, name: &'static str| {
        let storage = storage.clone();
        async move {
            let upload_id = storage.start_multipart(name, &digest).await?;
            let plans = plan_parts(bytes.len() as u64, 5 << 20);
            assert_eq!(plans.len(), 3);
            for part in &plans {
                let url = storage
                    .presign_part(name, &digest, &upload_id, part, Duration::from_secs(300))
                    .await?;
                let chunk = bytes[part.offset as usize..(part.offset + part.len) as usize].to_vec();
                let (status, body) = http::put(&url, &Default::default(), chunk).await?;
                assert_eq!(status, 200, "part {}: {body}", part.number);
            }
            storage.complete_multipart(name, &digest, &upload_id).await?;
            anyhow::Ok(())
        }
    };
    // Wrong parts: completed, but never promoted to the blob key.
    let mut corrupt = data.clone();
    corrupt[6 << 20] ^= 1;
    upload(corrupt, "upload-bad").await?;
    assert_eq!(storage.head(&digest).await?, None);
    let err = storage
        .promote("upload-bad", &digest, data.len() as u64)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch", "{err}");
    assert_eq!(storage.head(&digest).await?, None);

    upload(data.clone(), "upload-good").await?;
    assert_eq!(
        storage.head(&digest).await?,
        None,
        "not in place before promotion"
    );
    storage.promote("upload-good", &digest, data.len() as u64).await?;
    storage.verify(&digest, data.len() as u64).await?;
    // The upload key is gone: promoting again finds nothing.
    assert!(matches!(
        storage.promote("upload-good", &digest, data.len() as u64).await,
        Err(StorageError::NotFound(_))
    ));
    storage.delete(&digest).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs storage: run `make e2e`"]
async fn wrong_credentials_are_an_actionable_error() -> anyhow::Result<()> {
    let mut config = StorageSettings::from_env()?.config;
    config.secret_access_key = "0".repeat(64);
    let err = aether_storage::Storage::new(&config)
        .namespace("any")
        .head(&Digest::of(b"anything"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "StorageUnauthorized", "{err}");
    assert!(err.to_string().contains("check the access key"), "{err}");
    Ok(())
}

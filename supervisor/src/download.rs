//! `upgrade --url`: fetch a build over HTTP(S) (reqwest, rustls) into
//! `STATE_DIR/downloads/`, then hand it to the daemon, which admits it into the
//! build store, where `--sha256` is verified on the bytes copied. A URL
//! without a checksum is refused: a download is only trusted by its hash.
//! The download runs in its own task; the daemon never waits on the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncWriteExt;

/// Longest a download may take as a whole.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest build accepted.
pub const MAX_BUILD_BYTES: u64 = 2 << 30;

/// Why a download failed.
#[derive(Debug, Error)]
pub enum DownloadError {
    #[error("--url needs --sha256: a downloaded build is trusted only by its checksum")]
    NoChecksum,
    #[error("cannot download {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("cannot store the download in {path:?}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Download `url` into `state_dir/downloads/`, returning the file's path. The
/// file is made executable by its owner only; the checksum is checked when
/// the build is admitted.
pub async fn fetch(url: &str, state_dir: &Path) -> Result<PathBuf, DownloadError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fetch_err = |reason: String| DownloadError::Fetch {
        url: url.to_string(),
        reason,
    };
    let dir = state_dir.join("downloads");
    let store = |source| DownloadError::Store {
        path: dir.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(store)?;
    let client = reqwest::Client::builder()
        .timeout(DOWNLOAD_TIMEOUT)
        .build()
        .map_err(|e| fetch_err(e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fetch_err(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fetch_err(format!("HTTP {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n > MAX_BUILD_BYTES) {
        return Err(fetch_err(format!("larger than {MAX_BUILD_BYTES} bytes")));
    }
    let path = dir.join(format!("build-{}", std::process::id()));
    let mut file = tokio::fs::File::create(&path).await.map_err(store)?;
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(e.to_string()))? {
        total += chunk.len() as u64;
        if total > MAX_BUILD_BYTES {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(fetch_err(format!("larger than {MAX_BUILD_BYTES} bytes")));
        }
        file.write_all(&chunk).await.map_err(store)?;
    }
    file.sync_all().await.map_err(store)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(store)?;
    Ok(path)
}

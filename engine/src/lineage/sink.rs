//! Where the OpenLineage events of a run's writes go: appended as JSON lines to `lineage_file`,
//! and/or POSTed to the HTTP endpoint `lineage_url` (OpenLineage's HTTP transport, as Marquez
//! and other lineage servers receive it), with `lineage_api_key` as a bearer token.
//!
//! A file that cannot be written fails the statement (the file is the record the user asked
//! for). An endpoint is tried three times with backoff; if it still fails, the run goes on with
//! a warning naming the event: the write it describes has already committed.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EngineError, Result};
use crate::{EngineConfig, SecretStore};

/// One run's lineage destinations.
#[derive(Debug)]
pub struct LineageSink {
    /// The job name: the pipeline's path.
    job: String,
    file: Option<PathBuf>,
    http: Option<HttpTarget>,
}

struct HttpTarget {
    url: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &crate::secrets::redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

const ATTEMPTS: u32 = 3;

impl LineageSink {
    /// The destinations `config` names, if any.
    pub fn from_config(
        config: &EngineConfig,
        secrets: &SecretStore,
        job: String,
    ) -> Result<Option<Self>> {
        let http = match &config.lineage_url {
            None => None,
            Some(url) => {
                let parsed = url::Url::parse(url).map_err(|e| {
                    EngineError::Lineage(format!(
                        "lineage_url `{}`: {e}",
                        crate::secrets::redact_url(url)
                    ))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(EngineError::Lineage(
                        "lineage_url must be an http(s) URL".into(),
                    ));
                }
                let api_key = config
                    .lineage_api_key
                    .as_deref()
                    .map(|k| secrets.expand(k))
                    .transpose()
                    .map_err(|e| EngineError::Lineage(format!("lineage_api_key: {e}")))?;
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| EngineError::Lineage(format!("lineage HTTP client: {e}")))?;
                Some(HttpTarget {
                    url: url.clone(),
                    api_key,
                    client,
                })
            }
        };
        if http.is_none() && config.lineage_file.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            job,
            file: config.lineage_file.clone(),
            http,
        }))
    }

    /// Send the event of statement `index`'s committed write.
    pub async fn emit(&self, index: usize, l: &super::Lineage) -> Result<()> {
        let job = format!("{}#{index}", self.job);
        let run_id = uuid::Uuid::new_v4().to_string();
        let now = crate::state::now();
        let event = super::openlineage_event(l, &job, &run_id, &now);
        if let Some(path) = &self.file {
            append(path, &event).await?;
        }
        if let Some(http) = &self.http
            && let Err(e) = http.post(&event).await
        {
            tracing::warn!(
                "OpenLineage event for {job} not delivered to {}: {e}",
                crate::secrets::redact_url(&http.url)
            );
        }
        Ok(())
    }
}

async fn append(path: &std::path::Path, event: &serde_json::Value) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut line = event.to_string();
    line.push('\n');
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| {
            EngineError::Lineage(format!("cannot write lineage to {}: {e}", path.display()))
        })?;
    f.write_all(line.as_bytes()).await.map_err(|e| {
        EngineError::Lineage(format!("cannot write lineage to {}: {e}", path.display()))
    })?;
    Ok(())
}

impl HttpTarget {
    async fn post(&self, event: &serde_json::Value) -> Result<()> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let mut req = self.client.post(&self.url).json(event);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    last = format!("HTTP {status}");
                    // Only 408, 429 and 5xx may succeed later.
                    if !(status.is_server_error() || matches!(status.as_u16(), 408 | 429)) {
                        break;
                    }
                }
                Err(e) => last = format!("request failed: {}", e.without_url()),
            }
        }
        Err(EngineError::Lineage(format!(
            "{last} (after {ATTEMPTS} attempts at most)"
        )))
    }
}

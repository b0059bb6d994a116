//! Parsing `--store` / `LABCTL_STORE` and `spec.store` into a store location.

use std::path::PathBuf;

use labctl_core::manifest::StoreConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A directory with the bucket layout.
    Dir(PathBuf),
    S3 {
        bucket: String,
        prefix: Option<String>,
        endpoint: Option<String>,
        region: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("store URL `{0}` names no bucket")]
    NoBucket(String),
    #[error("unsupported store URL scheme in `{0}`; use s3://BUCKET[/PREFIX], file://DIR or a directory path")]
    Scheme(String),
}

impl StoreLocation {
    pub fn parse(s: &str) -> Result<StoreLocation, LocationError> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let rest = rest.trim_end_matches('/');
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, Some(p.trim_matches('/').to_string())),
                None => (rest, None),
            };
            if bucket.is_empty() {
                return Err(LocationError::NoBucket(s.to_string()));
            }
            return Ok(StoreLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.filter(|p| !p.is_empty()),
                endpoint: None,
                region: None,
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(StoreLocation::Dir(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Err(LocationError::Scheme(s.to_string()));
        }
        Ok(StoreLocation::Dir(PathBuf::from(s)))
    }

    pub fn from_config(config: &StoreConfig) -> StoreLocation {
        StoreLocation::S3 {
            bucket: config.s3.bucket.clone(),
            prefix: config.s3.prefix.clone(),
            endpoint: config.s3.endpoint.clone(),
            region: config.s3.region.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        assert_eq!(
            StoreLocation::parse("s3://lab-images/ci/run-1/").unwrap(),
            StoreLocation::S3 {
                bucket: "lab-images".into(),
                prefix: Some("ci/run-1".into()),
                endpoint: None,
                region: None
            }
        );
        assert!(matches!(
            StoreLocation::parse("s3://lab").unwrap(),
            StoreLocation::S3 { prefix: None, .. }
        ));
        assert_eq!(
            StoreLocation::parse("file:///srv/images").unwrap(),
            StoreLocation::Dir("/srv/images".into())
        );
        assert_eq!(
            StoreLocation::parse("state-examples/empty").unwrap(),
            StoreLocation::Dir("state-examples/empty".into())
        );
        assert!(StoreLocation::parse("s3://").is_err());
        assert!(StoreLocation::parse("gs://x").is_err());
    }
}

//! A repository in S3-compatible object storage (AWS S3, DigitalOcean Spaces, SeaweedFS, MinIO),
//! on the `object_store` crate.
//!
//! Objects have the same keys as in a local directory ([`crate::object_key`]) below the URL's
//! prefix. The rest of hoard is synchronous: this backend owns a small tokio runtime and blocks
//! on it, so callers keep as many requests in flight as they have threads
//! ([`Storage::connections`] tells writers how many to use).
//!
//! Every HTTP request is made by this module, once: `object_store`'s own retries are off, and
//! [`S3Storage`] retries temporary failures itself (bounded, exponential backoff with full
//! jitter) so that each request and each retry is counted ([`Storage::counts`]).
//!
//! - **Create only if absent:** single-request uploads send `If-None-Match: *`
//!   (`PutMode::Create`). A store that answers 501 Not Implemented to it makes this backend fall
//!   back, with a warning, to HEAD then PUT, which is racy between hosts (docs/FORMAT.md says
//!   what that risks). Multipart uploads are unconditional: only packs are that large, and a
//!   pack's name is a fresh random id that no other writer can choose.
//! - **No half-visible objects:** a PUT is atomic; a multipart upload becomes visible only at
//!   its complete request and is aborted when a part fails for good. Uploads abandoned by a
//!   killed process stay invisible and cost storage until a lifecycle rule removes them
//!   (docs/S3.md).
//! - **Credentials** come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
//!   else the shared credentials file's profile (`AWS_PROFILE`, default `default`), else the
//!   instance or container credential endpoints. They are never printed: errors show the
//!   location, never the builder's configuration.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use crate::{
    kind_dir, object_key, valid_name, Counters, ErrorKind, ObjectInfo, ObjectKind, RequestCounts, Result, Storage,
    StorageError, CONFIG_NAME,
};

/// A parsed repository URL for object storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Key prefix without leading or trailing slashes ("" for the bucket's root).
    pub prefix: String,
    /// `https://host[:port]` for S3-compatible stores; `None` for AWS.
    pub endpoint: Option<String>,
    /// The region the URL names (Spaces); otherwise taken from the AWS settings.
    pub region: Option<String>,
}

impl S3Url {
    /// Parses `s3://BUCKET/PREFIX` (AWS), `s3:https://HOST/BUCKET/PREFIX` (any S3-compatible
    /// endpoint, path-style requests; `s3:http://` for a server on loopback) and
    /// `spaces://REGION/BUCKET/PREFIX` (DigitalOcean Spaces). `Ok(None)` when `s` is none of
    /// these (a local path); an error when it is one of them but malformed.
    pub fn parse(s: &str) -> std::result::Result<Option<S3Url>, String> {
        let split_bucket = |rest: &str| -> std::result::Result<(String, String), String> {
            let rest = rest.trim_start_matches('/');
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{s}: the URL names no bucket"));
            }
            if !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
                return Err(format!("{s}: {bucket:?} is not a valid bucket name"));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
                return Err(format!("{s}: the prefix {prefix:?} has an empty, `.` or `..` component"));
            }
            Ok((bucket.to_owned(), prefix))
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(rest)?;
            return Ok(Some(S3Url { bucket, prefix, endpoint: None, region: None }));
        }
        if let Some(rest) = s.strip_prefix("s3:") {
            let (scheme, rest) = if let Some(r) = rest.strip_prefix("https://") {
                ("https", r)
            } else if let Some(r) = rest.strip_prefix("http://") {
                ("http", r)
            } else {
                return Err(format!(
                    "{s}: use s3://BUCKET/PREFIX for AWS or s3:https://HOST/BUCKET/PREFIX for another endpoint"
                ));
            };
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() || host.contains('@') {
                return Err(format!("{s}: the URL names no host (credentials never go in the URL)"));
            }
            let (bucket, prefix) = split_bucket(path)?;
            return Ok(Some(S3Url { bucket, prefix, endpoint: Some(format!("{scheme}://{host}")), region: None }));
        }
        if let Some(rest) = s.strip_prefix("spaces://") {
            let (region, path) = rest.split_once('/').unwrap_or((rest, ""));
            if region.is_empty() || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                return Err(format!(
                    "{s}: expected spaces://REGION/BUCKET/PREFIX, e.g. spaces://fra1/my-backups/host1"
                ));
            }
            let (bucket, prefix) = split_bucket(path)?;
            return Ok(Some(S3Url {
                bucket,
                prefix,
                endpoint: Some(format!("https://{region}.digitaloceanspaces.com")),
                region: Some(region.to_owned()),
            }));
        }
        Ok(None)
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = if self.prefix.is_empty() { String::new() } else { format!("/{}", self.prefix) };
        match (&self.endpoint, &self.region) {
            (None, _) => write!(f, "s3://{}{tail}", self.bucket),
            (Some(_), Some(region)) => write!(f, "spaces://{region}/{}{tail}", self.bucket),
            (Some(e), None) => write!(f, "s3:{e}/{}{tail}", self.bucket),
        }
    }
}

/// How the backend behaves; [`S3Options::from_env`] reads the documented environment.
/// (No `Debug`: it may hold a secret.)
#[derive(Clone)]
pub struct S3Options {
    /// Uploads a writer keeps in flight (`--connections`).
    pub connections: usize,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Attempts after the first for a request that failed temporarily.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it up to `retry_max`, and sleeps a random time
    /// up to that (full jitter).
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Time allowed for one request (a part of up to `part_size` bytes included).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// An access key id and secret to use instead of the environment's (for programs that
    /// embed hoard; the command line always takes them from the environment or profile).
    pub credentials: Option<(String, String)>,
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            connections: 4,
            multipart_threshold: 32 << 20,
            part_size: 16 << 20,
            max_retries: 10,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(20),
            request_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            credentials: None,
        }
    }
}

impl S3Options {
    /// The defaults, changed by `HOARD_S3_RETRIES`, `HOARD_S3_RETRY_BASE_MS`,
    /// `HOARD_S3_MULTIPART_THRESHOLD` and `HOARD_S3_PART_SIZE` (bytes; parts are at least 5 MiB,
    /// as S3 requires), `HOARD_S3_TIMEOUT_SECS`.
    pub fn from_env() -> std::result::Result<S3Options, String> {
        fn num(var: &str) -> std::result::Result<Option<u64>, String> {
            match std::env::var(var) {
                Ok(v) => v.trim().parse().map(Some).map_err(|_| format!("{var}={v:?} is not a whole number")),
                Err(_) => Ok(None),
            }
        }
        let mut o = S3Options::default();
        if let Some(n) = num("HOARD_S3_RETRIES")? {
            o.max_retries = n.min(100) as u32;
        }
        if let Some(n) = num("HOARD_S3_RETRY_BASE_MS")? {
            o.retry_base = Duration::from_millis(n);
            o.retry_max = o.retry_max.max(o.retry_base);
        }
        if let Some(n) = num("HOARD_S3_MULTIPART_THRESHOLD")? {
            o.multipart_threshold = n;
        }
        if let Some(n) = num("HOARD_S3_PART_SIZE")? {
            if n < 5 << 20 {
                return Err(format!("HOARD_S3_PART_SIZE={n}: S3 needs parts of at least 5 MiB (5242880 bytes)"));
            }
            o.part_size = n;
        }
        if let Some(n) = num("HOARD_S3_TIMEOUT_SECS")? {
            o.request_timeout = Duration::from_secs(n.max(1));
        }
        Ok(o)
    }
}

/// A repository in a bucket, below a prefix.
pub struct S3Storage {
    url: S3Url,
    store: Arc<AmazonS3>,
    rt: tokio::runtime::Runtime,
    opts: S3Options,
    counts: Counters,
    /// Set when the store answered 501 to a conditional PUT.
    no_conditional_put: AtomicBool,
}

/// What went wrong with a request, after classification.
struct Failure {
    kind: ErrorKind,
    /// A hint for the user, shown after the error.
    hint: Option<&'static str>,
    /// 501 Not Implemented: the store lacks the feature.
    not_implemented: bool,
    source: object_store::Error,
}

fn status_in(text: &str) -> Option<u16> {
    // object_store shows the status as "... status code: 503 Service Unavailable ..." and
    // "... error response: ..." carries it only in `status`; the text form is all it exposes.
    let i = text.find("status code: ")?;
    text[i + 13..].get(..3)?.parse().ok()
}

fn is_transport(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return matches!(h.kind(), K::Connect | K::Request | K::Timeout | K::Interrupted | K::Decode);
        }
        cur = err.source();
    }
    false
}

fn classify(e: object_store::Error) -> Failure {
    use object_store::Error as E;
    let text = e.to_string();
    let f = |kind, hint| (kind, hint, false);
    let (kind, hint, not_implemented) = match &e {
        E::NotFound { .. } if text.contains("NoSuchBucket") => {
            f(ErrorKind::NoBucket, Some("the bucket does not exist: create it first (hoard never creates buckets)"))
        }
        E::NotFound { .. } => f(ErrorKind::NotFound, None),
        E::AlreadyExists { .. } | E::Precondition { .. } => f(ErrorKind::AlreadyExists, None),
        E::PermissionDenied { .. }
            if text.contains("SignatureDoesNotMatch")
                || text.contains("InvalidAccessKeyId")
                || text.contains("ExpiredToken") =>
        {
            f(
                ErrorKind::PermissionDenied,
                Some("the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile)"),
            )
        }
        E::PermissionDenied { .. } => f(
            ErrorKind::PermissionDenied,
            Some("check that the access key may read, write, list and delete in this bucket"),
        ),
        E::Unauthenticated { .. } => f(
            ErrorKind::PermissionDenied,
            Some("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile) and the region"),
        ),
        E::NotImplemented { .. } | E::NotSupported { .. } => (ErrorKind::Other, None, true),
        _ => match status_in(&text) {
            Some(501) => (ErrorKind::Other, None, true),
            Some(408 | 429 | 500..=599) => f(ErrorKind::Temporary, None),
            Some(400) if text.contains("RequestTimeout") || text.contains("SlowDown") => f(ErrorKind::Temporary, None),
            Some(400) if text.contains("AuthorizationHeaderMalformed") || text.contains("InvalidRegion") => {
                f(ErrorKind::Other, Some("the region does not match the bucket's: set AWS_REGION"))
            }
            Some(403)
                if text.contains("SignatureDoesNotMatch")
                    || text.contains("InvalidAccessKeyId")
                    || text.contains("ExpiredToken") =>
            {
                f(
                    ErrorKind::PermissionDenied,
                    Some("the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the AWS profile)"),
                )
            }
            Some(403) => f(
                ErrorKind::PermissionDenied,
                Some("check the credentials, the region and that the key may use this bucket"),
            ),
            Some(_) => f(ErrorKind::Other, None),
            None if text.contains("SlowDown") => f(ErrorKind::Temporary, None),
            None if is_transport(&e) => f(ErrorKind::Temporary, None),
            None => f(ErrorKind::Other, None),
        },
    };
    Failure { kind, hint, not_implemented, source: e }
}

/// An `object_store` error with its hint, as a storage error's source.
#[derive(Debug)]
struct Cause {
    inner: object_store::Error,
    hint: Option<&'static str>,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)?;
        if let Some(h) = self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Cause {}

fn to_storage_error(what: String, f: Failure) -> StorageError {
    StorageError::with_source(f.kind, what, Cause { inner: f.source, hint: f.hint })
}

fn jitter(max: Duration) -> Duration {
    let n = hoard_core::id::random_u64();
    Duration::from_nanos(n % (max.as_nanos() as u64).max(1))
}

impl S3Storage {
    /// Connects to the bucket the URL names (no request is made until the first operation).
    pub fn open(url: S3Url, opts: S3Options) -> Result<S3Storage> {
        let cfg_err = |m: String| StorageError::new(ErrorKind::Other, format!("{url}: {m}"));
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some((id, secret)) = &opts.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        } else if env("AWS_ACCESS_KEY_ID").is_none() {
            if let Some(p) = profile::credentials().map_err(&cfg_err)? {
                b = b.with_access_key_id(p.key_id).with_secret_access_key(p.secret);
                if let Some(t) = p.token {
                    b = b.with_token(t);
                }
            }
        }
        let region = url
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(profile::region)
            .unwrap_or_else(|| "us-east-1".to_owned());
        b = b.with_region(region);
        if let Some(e) = &url.endpoint {
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false).with_allow_http(e.starts_with("http://"));
        }
        let client = ClientOptions::new()
            .with_timeout(opts.request_timeout)
            .with_connect_timeout(opts.connect_timeout)
            .with_allow_http(url.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")));
        let retry = RetryConfig { max_retries: 0, ..RetryConfig::default() };
        let store = b
            .with_client_options(client)
            .with_retry(retry)
            // One DELETE per object: counted as such, and every S3-compatible store has it.
            .with_disable_bulk_delete(true)
            .build()
            .map_err(|e| cfg_err(format!("cannot configure the S3 client: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hoard-s3")
            .enable_all()
            .build()
            .map_err(|e| StorageError::with_source(ErrorKind::Other, "starting the S3 client's runtime", e))?;
        Ok(S3Storage {
            url,
            store: Arc::new(store),
            rt,
            opts,
            counts: Counters::default(),
            no_conditional_put: AtomicBool::new(false),
        })
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    fn key(&self, kind: ObjectKind, name: &str) -> Result<ObjPath> {
        let k = object_key(kind, name)?;
        Ok(if self.url.prefix.is_empty() {
            ObjPath::from(k)
        } else {
            ObjPath::from(format!("{}/{k}", self.url.prefix))
        })
    }

    fn label(&self, kind: ObjectKind, name: &str) -> String {
        format!("{} {name} in {}", kind.name(), self.url)
    }

    /// Runs one request, again after temporary failures (bounded, with backoff); counts each
    /// attempt in `counter` and each repetition in `retries`.
    fn request<T, F, Fut>(&self, counter: &AtomicU64, mut op: F) -> std::result::Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut attempt = 0u32;
        loop {
            Counters::add(counter, 1);
            match self.rt.block_on(op()) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let f = classify(e);
                    if f.kind != ErrorKind::Temporary || attempt >= self.opts.max_retries {
                        return Err(f);
                    }
                    let cap = self.opts.retry_base.saturating_mul(1u32 << attempt.min(20)).min(self.opts.retry_max);
                    tracing::debug!("retrying after a temporary S3 failure: {}", f.source);
                    std::thread::sleep(jitter(cap));
                    attempt += 1;
                    Counters::add(&self.counts.retries, 1);
                }
            }
        }
    }

    fn put_whole(&self, path: &ObjPath, pieces: &[Bytes], total: u64, label: impl Fn() -> String) -> Result<()> {
        let payload = || PutPayload::from_iter(pieces.iter().cloned());
        if !self.no_conditional_put.load(Ordering::Relaxed) {
            let mut attempts = 0u32;
            let r = self.request(&self.counts.put, || {
                attempts += 1;
                Counters::add(&self.counts.bytes_up, total);
                let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
                self.store.put_opts(path, payload(), opts)
            });
            match r {
                Ok(_) => return Ok(()),
                Err(f) if f.kind == ErrorKind::AlreadyExists && attempts > 1 => {
                    // An earlier attempt may have succeeded with its answer lost: then the
                    // object is ours, byte for byte.
                    if self.same_content(path, pieces, total)? {
                        return Ok(());
                    }
                    return Err(to_storage_error(format!("writing {}", label()), f));
                }
                Err(f) if f.not_implemented => {
                    tracing::warn!(
                        "{} does not support conditional writes (If-None-Match); falling back to HEAD then PUT, \
                         which cannot stop two hosts writing the same lock at the same instant",
                        self.url
                    );
                    self.no_conditional_put.store(true, Ordering::Relaxed);
                }
                Err(f) => return Err(to_storage_error(format!("writing {}", label()), f)),
            }
        }
        match self.request(&self.counts.head, || self.store.head(path)) {
            Ok(_) => {
                return Err(StorageError::new(ErrorKind::AlreadyExists, format!("writing {}", label())));
            }
            Err(f) if f.kind == ErrorKind::NotFound => {}
            Err(f) => return Err(to_storage_error(format!("writing {}", label()), f)),
        }
        self.request(&self.counts.put, || {
            Counters::add(&self.counts.bytes_up, total);
            self.store.put_opts(path, payload(), PutOptions::default())
        })
        .map(drop)
        .map_err(|f| to_storage_error(format!("writing {}", label()), f))
    }

    fn same_content(&self, path: &ObjPath, pieces: &[Bytes], total: u64) -> Result<bool> {
        let got = self
            .request(&self.counts.get, || async { self.store.get(path).await?.bytes().await })
            .map_err(|f| to_storage_error(format!("reading back {path}"), f))?;
        Counters::add(&self.counts.bytes_down, got.len() as u64);
        if got.len() as u64 != total {
            return Ok(false);
        }
        let mut at = 0;
        for p in pieces {
            if got[at..at + p.len()] != p[..] {
                return Ok(false);
            }
            at += p.len();
        }
        Ok(true)
    }

    /// The pieces cut into parts of `part_size` bytes, without copying.
    fn parts(pieces: &[Bytes], part_size: usize) -> Vec<PutPayload> {
        let mut parts = Vec::new();
        let mut cur: Vec<Bytes> = Vec::new();
        let mut cur_len = 0;
        for p in pieces {
            let mut p = p.clone();
            while !p.is_empty() {
                let take = (part_size - cur_len).min(p.len());
                cur.push(p.split_to(take));
                cur_len += take;
                if cur_len == part_size {
                    parts.push(PutPayload::from_iter(std::mem::take(&mut cur)));
                    cur_len = 0;
                }
            }
        }
        if cur_len > 0 {
            parts.push(PutPayload::from_iter(cur));
        }
        parts
    }

    fn put_multipart(&self, path: &ObjPath, pieces: &[Bytes], total: u64, label: impl Fn() -> String) -> Result<()> {
        let err = |f: Failure| to_storage_error(format!("writing {}", label()), f);
        let id = self.request(&self.counts.multipart_create, || self.store.create_multipart(path)).map_err(err)?;
        let result = (|| {
            let mut done = Vec::new();
            for (i, part) in Self::parts(pieces, self.opts.part_size as usize).into_iter().enumerate() {
                let n = part.content_length() as u64;
                let pid = self.request(&self.counts.multipart_part, || {
                    Counters::add(&self.counts.bytes_up, n);
                    self.store.put_part(path, &id, i, part.clone())
                })?;
                done.push(pid);
            }
            let mut attempts = 0;
            match self.request(&self.counts.multipart_complete, || {
                attempts += 1;
                self.store.complete_multipart(path, &id, done.clone())
            }) {
                Ok(_) => Ok(()),
                // A repeated complete finds the upload gone when the first one worked.
                Err(f) if attempts > 1 && f.kind == ErrorKind::NotFound => {
                    match self.request(&self.counts.head, || self.store.head(path)) {
                        Ok(m) if m.size == total => Ok(()),
                        _ => Err(f),
                    }
                }
                Err(f) => Err(f),
            }
        })();
        if let Err(f) = result {
            // Best effort: what is not aborted, the bucket's lifecycle rule removes.
            let _ = self.request(&self.counts.multipart_abort, || self.store.abort_multipart(path, &id));
            return Err(err(f));
        }
        Ok(())
    }
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn create(&self, kind: ObjectKind, name: &str, pieces: &[Bytes]) -> Result<()> {
        let path = self.key(kind, name)?;
        let total: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let label = || self.label(kind, name);
        if total > self.opts.multipart_threshold && kind == ObjectKind::Pack {
            self.put_multipart(&path, pieces, total, label)
        } else {
            self.put_whole(&path, pieces, total, label)
        }
    }

    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let path = self.key(kind, name)?;
        let b = self
            .request(&self.counts.get, || async { self.store.get(&path).await?.bytes().await })
            .map_err(|f| to_storage_error(format!("reading {}", self.label(kind, name)), f))?;
        Counters::add(&self.counts.bytes_down, b.len() as u64);
        Ok(b.to_vec())
    }

    fn read_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.key(kind, name)?;
        let what = || format!("reading {len} bytes at {offset} of {}", self.label(kind, name));
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.checked_add(len).ok_or_else(|| StorageError::new(ErrorKind::Other, what()))?;
        let b = self
            .request(&self.counts.get, || self.store.get_range(&path, offset..end))
            .map_err(|f| to_storage_error(what(), f))?;
        Counters::add(&self.counts.bytes_down, b.len() as u64);
        if b.len() as u64 != len {
            return Err(StorageError::new(ErrorKind::Other, format!("{}: got {} bytes", what(), b.len())));
        }
        Ok(b.to_vec())
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64> {
        let path = self.key(kind, name)?;
        self.request(&self.counts.head, || self.store.head(&path))
            .map(|m| m.size)
            .map_err(|f| to_storage_error(format!("reading {}", self.label(kind, name)), f))
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        let what = || format!("listing {}s in {}", kind.name(), self.url);
        if kind == ObjectKind::Config {
            let path = self.key(kind, CONFIG_NAME)?;
            return match self.request(&self.counts.head, || self.store.head(&path)) {
                Ok(m) => Ok(vec![ObjectInfo {
                    name: CONFIG_NAME.into(),
                    size: m.size,
                    modified_ns: m.last_modified.timestamp_nanos_opt().unwrap_or(0),
                }]),
                Err(f) if f.kind == ErrorKind::NotFound => Ok(vec![]),
                Err(f) => Err(to_storage_error(what(), f)),
            };
        }
        let dir = if self.url.prefix.is_empty() {
            kind_dir(kind).to_owned()
        } else {
            format!("{}/{}", self.url.prefix, kind_dir(kind))
        };
        let dir = ObjPath::from(dir);
        // One listing is one request per page of up to 1,000 keys; a failure restarts it.
        let pages = AtomicU64::new(0);
        let metas = self
            .request(&pages, || async {
                let mut s = self.store.list(Some(&dir));
                let mut out = Vec::new();
                while let Some(m) = s.next().await {
                    out.push(m?);
                }
                Ok(out)
            })
            .map_err(|f| to_storage_error(what(), f))?;
        let attempts = pages.load(Ordering::Relaxed);
        Counters::add(&self.counts.list, attempts - 1 + (metas.len() as u64).div_ceil(1000).max(1));
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let Some(name) = m.location.filename() else { continue };
            if !valid_name(kind, name) {
                continue;
            }
            out.push(ObjectInfo {
                name: name.to_owned(),
                size: m.size,
                modified_ns: m.last_modified.timestamp_nanos_opt().unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        let path = self.key(kind, name)?;
        self.request(&self.counts.delete, || self.store.delete(&path))
            .map_err(|f| to_storage_error(format!("deleting {}", self.label(kind, name)), f))
    }

    fn counts(&self) -> RequestCounts {
        self.counts.snapshot()
    }

    fn connections(&self) -> usize {
        self.opts.connections.max(1)
    }

    fn is_remote(&self) -> bool {
        true
    }
}

/// The AWS shared credentials and config files, for `AWS_PROFILE`.
mod profile {
    use super::*;

    pub struct Creds {
        pub key_id: String,
        pub secret: String,
        pub token: Option<String>,
    }

    fn home() -> Option<PathBuf> {
        std::env::var_os("HOME").map(PathBuf::from)
    }

    fn profile_name() -> String {
        std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "default".into())
    }

    /// The `key = value` pairs of one `[section]` of an INI file.
    pub fn section(text: &str, want: &str) -> Option<Vec<(String, String)>> {
        let mut found = None;
        let mut cur: Option<String> = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                cur = Some(h.trim().to_owned());
                if cur.as_deref() == Some(want) {
                    found.get_or_insert_with(Vec::new);
                }
                continue;
            }
            if cur.as_deref() == Some(want) {
                if let Some((k, v)) = line.split_once('=') {
                    found.get_or_insert_with(Vec::new).push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
        }
        found
    }

    pub fn credentials() -> std::result::Result<Option<Creds>, String> {
        let file = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
            Some(f) => PathBuf::from(f),
            None => match home() {
                Some(h) => h.join(".aws/credentials"),
                None => return Ok(None),
            },
        };
        let Ok(text) = std::fs::read_to_string(&file) else { return Ok(None) };
        let name = profile_name();
        let Some(kv) = section(&text, &name) else {
            if std::env::var_os("AWS_PROFILE").is_some() {
                return Err(format!("AWS profile {name:?} is not in {}", file.display()));
            }
            return Ok(None);
        };
        let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(key_id), Some(secret)) => Ok(Some(Creds { key_id, secret, token: get("aws_session_token") })),
            _ => Err(format!(
                "AWS profile {name:?} in {} lacks aws_access_key_id or aws_secret_access_key",
                file.display()
            )),
        }
    }

    pub fn region() -> Option<String> {
        let file = match std::env::var_os("AWS_CONFIG_FILE") {
            Some(f) => PathBuf::from(f),
            None => home()?.join(".aws/config"),
        };
        let text = std::fs::read_to_string(file).ok()?;
        let name = profile_name();
        let header = if name == "default" { name } else { format!("profile {name}") };
        section(&text, &header)?.into_iter().find(|(k, _)| k == "region").map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let p = |s: &str| S3Url::parse(s).unwrap().unwrap();
        let u = p("s3://my-bucket/hosts/web1");
        assert_eq!((u.bucket.as_str(), u.prefix.as_str(), u.endpoint.clone()), ("my-bucket", "hosts/web1", None));
        assert_eq!(u.to_string(), "s3://my-bucket/hosts/web1");
        let u = p("s3:https://minio.example.com:9000/b/p/");
        assert_eq!(u.endpoint.as_deref(), Some("https://minio.example.com:9000"));
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("b", "p"));
        assert_eq!(u.to_string(), "s3:https://minio.example.com:9000/b/p");
        let u = p("s3:http://127.0.0.1:8333/bucket");
        assert_eq!((u.endpoint.as_deref(), u.prefix.as_str()), (Some("http://127.0.0.1:8333"), ""));
        let u = p("spaces://fra1/backups/host1");
        assert_eq!(u.endpoint.as_deref(), Some("https://fra1.digitaloceanspaces.com"));
        assert_eq!(u.region.as_deref(), Some("fra1"));
        assert_eq!(u.to_string(), "spaces://fra1/backups/host1");
        assert_eq!(S3Url::parse("/srv/backup").unwrap(), None);
        assert_eq!(S3Url::parse("relative/dir").unwrap(), None);
        for bad in [
            "s3://",
            "s3://Upper/x",
            "s3:ftp://h/b",
            "s3:https:///b",
            "s3:https://key:secret@h/b",
            "spaces:///b",
            "s3://b/a/../c",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn parts_cover_the_pieces_without_gaps() {
        let pieces: Vec<Bytes> = [7usize, 3, 0, 12, 1].iter().map(|&n| Bytes::from(vec![n as u8; n])).collect();
        let parts = S3Storage::parts(&pieces, 5);
        let lens: Vec<usize> = parts.iter().map(|p| p.content_length()).collect();
        assert_eq!(lens, vec![5, 5, 5, 5, 3]);
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().flat_map(|b| b.to_vec())).collect();
        let want: Vec<u8> = pieces.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(joined, want);
    }

    #[test]
    fn classification() {
        let generic = |msg: &str| object_store::Error::Generic { store: "S3", source: msg.to_string().into() };
        let k = |e| classify(e).kind;
        assert_eq!(
            k(generic("Server returned non-2xx status code: 503 Service Unavailable: SlowDown")),
            ErrorKind::Temporary
        );
        assert_eq!(k(generic("Server returned non-2xx status code: 500 Internal Server Error")), ErrorKind::Temporary);
        assert_eq!(k(generic("Server returned non-2xx status code: 429 Too Many Requests")), ErrorKind::Temporary);
        assert_eq!(
            k(generic("Server returned non-2xx status code: 400 Bad Request: InvalidArgument")),
            ErrorKind::Other
        );
        assert_eq!(k(generic("Server returned non-2xx status code: 403 Forbidden")), ErrorKind::PermissionDenied);
        assert!(classify(generic("Server returned non-2xx status code: 501 Not Implemented")).not_implemented);
        let nf = |m: &str| object_store::Error::NotFound { path: "p".into(), source: m.to_string().into() };
        assert_eq!(k(nf("NoSuchKey")), ErrorKind::NotFound);
        assert_eq!(k(nf("<Code>NoSuchBucket</Code>")), ErrorKind::NoBucket);
        let pre = object_store::Error::Precondition { path: "p".into(), source: "x".to_string().into() };
        assert_eq!(k(pre), ErrorKind::AlreadyExists);
    }

    #[test]
    fn ini_sections() {
        let text = "[default]\naws_access_key_id = A\n# c\n[profile x]\nregion=eu-west-1\n[other]\nk=v\n";
        assert_eq!(profile::section(text, "default").unwrap(), vec![("aws_access_key_id".into(), "A".into())]);
        assert_eq!(profile::section(text, "profile x").unwrap(), vec![("region".into(), "eu-west-1".into())]);
        assert!(profile::section(text, "missing").is_none());
    }
}

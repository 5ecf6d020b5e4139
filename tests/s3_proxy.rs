//! A fault-injecting, request-counting HTTP/1.1 proxy to put in front of an S3 server in tests.
//! See docs/S3-TESTING.md.
//!
//! It forwards every request byte for byte, Host header included (the client's SigV4 signature
//! covers the host it connected to, and the server checks it against that same header). It counts
//! requests by S3 operation and body bytes each way, and answers a chosen share of requests with
//! `503 SlowDown` or delays them. Std threads only: one per client connection, and one upstream
//! connection per forwarded request. Depends on std only, like `s3_server.rs`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The S3 operation a request is, told from its method, query and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// PUT of a whole object.
    Put,
    /// PUT with `x-amz-copy-source`.
    Copy,
    /// POST `?uploads`.
    MultipartCreate,
    /// PUT `?partNumber=..&uploadId=..`.
    PartUpload,
    /// POST `?uploadId=..`.
    MultipartComplete,
    /// DELETE `?uploadId=..`.
    MultipartAbort,
    /// GET of an object without a Range header.
    Get,
    /// GET of an object with a Range header.
    RangedGet,
    Head,
    /// GET with `list-type=2`, or any GET of a bucket itself (or of `/`).
    List,
    /// DELETE of one object.
    Delete,
    /// POST `?delete` (DeleteObjects).
    BulkDelete,
    Other,
}

/// What went through the proxy since it started or since the last `reset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests forwarded to the server, by kind (those the proxy answered itself are in `injected`).
    pub put: u64,
    pub copy: u64,
    pub multipart_create: u64,
    pub part_upload: u64,
    pub multipart_complete: u64,
    pub multipart_abort: u64,
    pub get: u64,
    pub ranged_get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    pub bulk_delete: u64,
    pub other: u64,
    /// Request body bytes forwarded to the server (payload, without chunked framing).
    pub bytes_up: u64,
    /// Response body bytes forwarded to the client (payload, without chunked framing).
    pub bytes_down: u64,
    /// Responses from the server with a 4xx status (404 to a HEAD, 412 to a conditional PUT...).
    pub status_4xx: u64,
    /// Responses from the server with a 5xx status.
    pub status_5xx: u64,
    /// Requests the proxy answered itself with 503 SlowDown, never forwarded.
    pub injected: u64,
    /// Forwarded requests the proxy held back first.
    pub delayed: u64,
}

impl Counts {
    /// Forwarded requests of one kind.
    pub fn of(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Put => self.put,
            Kind::Copy => self.copy,
            Kind::MultipartCreate => self.multipart_create,
            Kind::PartUpload => self.part_upload,
            Kind::MultipartComplete => self.multipart_complete,
            Kind::MultipartAbort => self.multipart_abort,
            Kind::Get => self.get,
            Kind::RangedGet => self.ranged_get,
            Kind::Head => self.head,
            Kind::List => self.list,
            Kind::Delete => self.delete,
            Kind::BulkDelete => self.bulk_delete,
            Kind::Other => self.other,
        }
    }

    /// All requests forwarded to the server.
    pub fn requests(&self) -> u64 {
        KINDS.iter().map(|&k| self.of(k)).sum()
    }

    fn slot(&mut self, kind: Kind) -> &mut u64 {
        match kind {
            Kind::Put => &mut self.put,
            Kind::Copy => &mut self.copy,
            Kind::MultipartCreate => &mut self.multipart_create,
            Kind::PartUpload => &mut self.part_upload,
            Kind::MultipartComplete => &mut self.multipart_complete,
            Kind::MultipartAbort => &mut self.multipart_abort,
            Kind::Get => &mut self.get,
            Kind::RangedGet => &mut self.ranged_get,
            Kind::Head => &mut self.head,
            Kind::List => &mut self.list,
            Kind::Delete => &mut self.delete,
            Kind::BulkDelete => &mut self.bulk_delete,
            Kind::Other => &mut self.other,
        }
    }
}

const KINDS: [Kind; 13] = [
    Kind::Put,
    Kind::Copy,
    Kind::MultipartCreate,
    Kind::PartUpload,
    Kind::MultipartComplete,
    Kind::MultipartAbort,
    Kind::Get,
    Kind::RangedGet,
    Kind::Head,
    Kind::List,
    Kind::Delete,
    Kind::BulkDelete,
    Kind::Other,
];

/// Which requests to fail or delay. The default passes everything through untouched.
///
/// The n-th request the policy applies to (counted from `set_policy`) is failed or delayed by a
/// pseudo-random draw from (`seed`, n): the same requests in the same order meet the same fate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// Share of requests, 0.0..=1.0, answered with `503 SlowDown` (their body read and dropped).
    pub fail_share: f64,
    /// Share of the requests not failed, 0.0..=1.0, forwarded only after `delay`.
    pub delay_share: f64,
    pub delay: Duration,
    /// Apply the policy to requests of this kind only; all others pass untouched.
    pub only: Option<Kind>,
    pub seed: u64,
}

/// The proxy; stops on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    policy: Mutex<Policy>,
    counts: Mutex<Counts>,
    /// How many requests the policy has been applied to since it was set.
    drawn: AtomicU64,
    stop: AtomicBool,
    /// Every client connection, to shut them down when the proxy stops.
    clients: Mutex<Vec<TcpStream>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 at a free port and forwards to `upstream` (an S3 server's address).
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy: binding a port: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            upstream,
            policy: Mutex::new(Policy::default()),
            counts: Mutex::new(Counts::default()),
            drawn: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("s3-proxy-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Ok(c) = conn.try_clone() {
                        lock(&sh.clients).push(c);
                    }
                    let sh = sh.clone();
                    let _ = std::thread::Builder::new().name("s3-proxy-conn".into()).spawn(move || {
                        // An error ends the connection, as a broken proxy or server would.
                        let _ = serve(&sh, conn);
                    });
                }
            })
            .map_err(|e| format!("proxy: spawning a thread: {e}"))?;
        Ok(FaultProxy { addr, shared, accept: Some(accept) })
    }

    /// "http://127.0.0.1:PORT": give this to the client instead of the server's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counts(&self) -> Counts {
        *lock(&self.shared.counts)
    }

    /// Zeroes the counts.
    pub fn reset(&self) {
        *lock(&self.shared.counts) = Counts::default();
    }

    /// Takes effect for the next request, including on connections already open.
    pub fn set_policy(&self, policy: Policy) {
        let mut p = lock(&self.shared.policy);
        *p = policy;
        self.shared.drawn.store(0, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in lock(&self.shared.clients).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// A poisoned lock only means a connection thread panicked; the counts are still worth reading.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the policy decided for one request.
enum Fate {
    Pass,
    Fail,
    Delay(Duration),
}

impl Shared {
    fn fate(&self, kind: Kind) -> Fate {
        let p = lock(&self.policy);
        if p.only.is_some_and(|k| k != kind) || (p.fail_share <= 0.0 && p.delay_share <= 0.0) {
            return Fate::Pass;
        }
        let n = self.drawn.fetch_add(1, Ordering::SeqCst);
        let draw = |salt: u64| (mix(p.seed ^ mix(n ^ salt)) >> 11) as f64 / (1u64 << 53) as f64;
        if draw(0) < p.fail_share {
            Fate::Fail
        } else if draw(0xde1a7) < p.delay_share {
            Fate::Delay(p.delay)
        } else {
            Fate::Pass
        }
    }

    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut lock(&self.counts));
    }
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The head of a request or response: its raw bytes and what the proxy needs from them.
struct Head {
    raw: Vec<u8>,
    /// Request: method, target. Response: status code in `status`.
    method: String,
    target: String,
    status: u16,
    headers: Vec<(String, String)>,
    /// HTTP/1.0 without keep-alive, or `Connection: close`.
    close: bool,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// How the body that follows is delimited.
    fn body(&self) -> io::Result<Body> {
        if self.has_token("transfer-encoding", "chunked") {
            return Ok(Body::Chunked);
        }
        match self.header("content-length") {
            Some(v) => v.trim().parse().map(Body::Length).map_err(|_| bad(format!("Content-Length {v:?}"))),
            None => Ok(Body::Length(0)),
        }
    }
}

enum Body {
    Length(u64),
    Chunked,
    /// A response without length or chunking: the body runs to the end of the connection.
    ToEof,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads a head up to and including its blank line. `Ok(None)` at a clean end of stream.
fn read_head(r: &mut impl BufRead, request: bool) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        let n = read_line(r, 65536, &mut raw)?;
        if n == 0 {
            return if raw.is_empty() { Ok(None) } else { Err(bad("end of stream inside a head".into())) };
        }
        if raw.len() > 65536 {
            return Err(bad("head longer than 64 KiB".into()));
        }
        let line = &raw[start..];
        if line == b"\r\n" || line == b"\n" {
            // Blank lines before a request line are allowed (RFC 9112, 2.2).
            if start == 0 {
                raw.clear();
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (a, b) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let (method, target, status, version) = if request {
        (a.to_owned(), b.to_owned(), 0, parts.next().unwrap_or_default())
    } else {
        (String::new(), String::new(), b.parse().map_err(|_| bad(format!("status line {first:?}")))?, a)
    };
    let mut head = Head { raw, method, target, status, headers, close: false };
    head.close =
        head.has_token("connection", "close") || (version == "HTTP/1.0" && !head.has_token("connection", "keep-alive"));
    Ok(Some(head))
}

/// Appends one line, at most `max` bytes of it, to `out`.
fn read_line(r: &mut impl BufRead, max: u64, out: &mut Vec<u8>) -> io::Result<usize> {
    Read::take(&mut *r, max).read_until(b'\n', out)
}

/// Copies a body from `r` to `w` (if any) byte for byte. Tells `payload` how many payload bytes
/// (without chunked framing) are about to go out, before they do: whoever receives them may read the
/// counts at once.
fn copy_body(
    r: &mut impl BufRead,
    mut w: Option<&mut TcpStream>,
    body: Body,
    payload: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut put = |buf: &[u8]| -> io::Result<()> {
        match w.as_mut() {
            Some(w) => w.write_all(buf),
            None => Ok(()),
        }
    };
    match body {
        Body::Length(n) => copy_n(r, n, &mut put, payload),
        Body::ToEof => copy_n(r, u64::MAX, &mut put, payload),
        Body::Chunked => {
            loop {
                let mut line = Vec::new();
                read_line(r, 4096, &mut line)?;
                if !line.ends_with(b"\n") {
                    return Err(bad("chunk size line".into()));
                }
                put(&line)?;
                let text = String::from_utf8_lossy(&line);
                let size = text.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(size, 16).map_err(|_| bad(format!("chunk size {size:?}")))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        let mut t = Vec::new();
                        read_line(r, 65536, &mut t)?;
                        if !t.ends_with(b"\n") {
                            return Err(bad("chunked trailer".into()));
                        }
                        put(&t)?;
                        if t == b"\r\n" || t == b"\n" {
                            return Ok(());
                        }
                    }
                }
                copy_n(r, size, &mut put, payload)?;
                let mut crlf = Vec::new();
                read_line(r, 2, &mut crlf)?;
                if crlf != b"\r\n" && crlf != b"\n" {
                    return Err(bad("no CRLF after a chunk".into()));
                }
                put(&crlf)?;
            }
        }
    }
}

/// Copies `n` bytes (or up to end of stream when `n` is `u64::MAX`).
fn copy_n(
    r: &mut impl BufRead,
    n: u64,
    put: &mut impl FnMut(&[u8]) -> io::Result<()>,
    payload: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            if n == u64::MAX {
                break;
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        payload(k as u64);
        put(&buf[..k])?;
        r.consume(k);
        left -= k as u64;
    }
    Ok(())
}

/// Which S3 operation a request is (path-style or virtual-hosted).
pub fn classify(method: &str, target: &str, has_range: bool, has_copy_source: bool) -> Kind {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    // "/bucket" or "/bucket/" (path-style) or "/" (virtual-hosted): no object key.
    let bucket_level = path.split('/').filter(|s| !s.is_empty()).count() <= 1;
    match method {
        "PUT" if has("partNumber") && has("uploadId") => Kind::PartUpload,
        "PUT" if has_copy_source => Kind::Copy,
        "PUT" => Kind::Put,
        "POST" if has("uploads") => Kind::MultipartCreate,
        "POST" if has("uploadId") => Kind::MultipartComplete,
        "POST" if has("delete") => Kind::BulkDelete,
        "DELETE" if has("uploadId") => Kind::MultipartAbort,
        "DELETE" => Kind::Delete,
        "GET" if has("list-type") || bucket_level => Kind::List,
        "GET" if has_range => Kind::RangedGet,
        "GET" => Kind::Get,
        "HEAD" => Kind::Head,
        _ => Kind::Other,
    }
}

/// Serves one client connection until either side closes it.
fn serve(sh: &Shared, client: TcpStream) -> io::Result<()> {
    let mut client_w = client.try_clone()?;
    let mut client_r = BufReader::new(client);
    let mut served: u64 = 0;
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(req) = read_head(&mut client_r, true)? else { return Ok(()) };
        served += 1;
        let kind = classify(
            &req.method,
            &req.target,
            req.header("range").is_some(),
            req.header("x-amz-copy-source").is_some(),
        );
        let expect_continue = req.has_token("expect", "100-continue");
        let req_body = req.body()?;

        match sh.fate(kind) {
            Fate::Fail => {
                // Under Expect: 100-continue the client has not sent the body and will not: answer
                // at once and close, as servers do.
                let close = req.close || expect_continue;
                if !expect_continue {
                    copy_body(&mut client_r, None, req_body, &mut |_| {})?;
                }
                let id = format!("hoard-proxy-{:x}-{served}", mix(served ^ u64::from(sh.upstream.port())));
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                     <Message>Please reduce your request rate.</Message><RequestId>{id}</RequestId></Error>"
                );
                let body = if req.method == "HEAD" { "" } else { xml.as_str() };
                let resp = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                     x-amz-request-id: {id}\r\n{}\r\n{body}",
                    body.len(),
                    if close { "Connection: close\r\n" } else { "" }
                );
                sh.count(|c| c.injected += 1);
                client_w.write_all(resp.as_bytes())?;
                if close {
                    let _ = client_w.shutdown(Shutdown::Both);
                    return Ok(());
                }
                continue;
            }
            Fate::Delay(d) => {
                std::thread::sleep(d);
                sh.count(|c| c.delayed += 1);
            }
            Fate::Pass => {}
        }

        // A server that is down shows as a connection closed without an answer.
        let up = TcpStream::connect(sh.upstream)?;
        up.set_nodelay(true)?;
        up.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut up_w = up.try_clone()?;
        let mut up_r = BufReader::new(up);
        up_w.write_all(&req.raw)?;
        sh.count(|c| *c.slot(kind) += 1);

        let mut resp = None;
        if expect_continue {
            let r = read_head(&mut up_r, false)?.ok_or_else(|| bad("server closed before answering".into()))?;
            if r.status == 100 {
                client_w.write_all(&r.raw)?;
            } else {
                // A final answer before the body: pass it on, and since the body may still come,
                // end the connection after it.
                resp = Some(r);
            }
        }
        let mut body_sent = false;
        if resp.is_none() {
            copy_body(&mut client_r, Some(&mut up_w), req_body, &mut |n| sh.count(|c| c.bytes_up += n))?;
            body_sent = true;
        }
        let resp = loop {
            if let Some(r) = resp.take() {
                break r;
            }
            let r = read_head(&mut up_r, false)?.ok_or_else(|| bad("server closed before answering".into()))?;
            if (100..200).contains(&r.status) && r.status != 101 {
                client_w.write_all(&r.raw)?;
                continue;
            }
            break r;
        };
        // Counted before the client can see the answer, like everything else.
        sh.count(|c| match resp.status {
            400..=499 => c.status_4xx += 1,
            500..=599 => c.status_5xx += 1,
            _ => {}
        });
        client_w.write_all(&resp.raw)?;
        let body = if req.method == "HEAD" || resp.status == 204 || resp.status == 304 {
            Body::Length(0)
        } else {
            match resp.body()? {
                Body::Length(0)
                    if resp.header("content-length").is_none() && !resp.has_token("transfer-encoding", "chunked") =>
                {
                    Body::ToEof
                }
                b => b,
            }
        };
        let to_eof = matches!(body, Body::ToEof);
        copy_body(&mut up_r, Some(&mut client_w), body, &mut |n| sh.count(|c| c.bytes_down += n))?;
        if req.close || resp.close || to_eof || !body_sent {
            let _ = client_w.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

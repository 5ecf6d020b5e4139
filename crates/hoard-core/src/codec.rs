//! The primitive encoding every repository structure is built from: little-endian fixed-width
//! integers, LEB128 varints, length-prefixed byte strings and 32-byte ids. Decoding never trusts
//! a length: every read is checked against what is left, so hostile input cannot make it
//! allocate more than the input's own size.

use crate::error::{malformed, Result};
use crate::id::{Id, ID_LEN};

/// Appends encodings to a byte vector.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
        self
    }
    /// Signed values as zigzag varints.
    pub fn ivarint(&mut self, v: i64) -> &mut Self {
        self.varint(((v << 1) ^ (v >> 63)) as u64)
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn id(&mut self, id: &Id) -> &mut Self {
        self.buf.extend_from_slice(id.as_bytes());
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads encodings from a byte slice, failing cleanly on anything short or out of range.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(malformed(self.what, format!("needs {n} bytes, {} left", self.buf.len())));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(malformed(self.what, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed(self.what, "varint too long"))
    }
    pub fn ivarint(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    /// A varint that must fit `usize` and be at most `max`.
    pub fn len(&mut self, max: usize) -> Result<usize> {
        let v = self.varint()?;
        if v > max as u64 {
            return Err(malformed(self.what, format!("length {v} exceeds {max}")));
        }
        Ok(v as usize)
    }
    pub fn u32_varint(&mut self) -> Result<u32> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| malformed(self.what, format!("{v} does not fit 32 bits")))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len(self.buf.len())?;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| malformed(self.what, "string is not UTF-8"))
    }
    pub fn id(&mut self) -> Result<Id> {
        Id::from_slice(self.take(ID_LEN)?)
    }
    /// A count of items that each take at least `min_item` bytes: bounded by what is left, so a
    /// forged count cannot reserve a huge vector.
    pub fn count(&mut self, min_item: usize) -> Result<usize> {
        let max = self.buf.len() / min_item.max(1);
        self.len(max)
    }
    pub fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(malformed(self.what, format!("boolean byte {b}"))),
        }
    }
    /// Fails unless everything was consumed: trailing bytes mean a format we do not understand.
    pub fn end(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.what, format!("{} trailing bytes", self.buf.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut w = Writer::new();
            w.varint(v);
            let b = w.finish();
            let mut r = Reader::new(&b, "t");
            assert_eq!(r.varint().unwrap(), v);
            r.end().unwrap();
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -1_700_000_000_000_000_000] {
            let mut w = Writer::new();
            w.ivarint(v);
            let b = w.finish();
            assert_eq!(Reader::new(&b, "t").ivarint().unwrap(), v);
        }
    }

    #[test]
    fn hostile_lengths_fail_cleanly() {
        let mut w = Writer::new();
        w.varint(u64::MAX);
        let b = w.finish();
        assert!(Reader::new(&b, "t").bytes().is_err());
        assert!(Reader::new(&[0xff; 11], "t").varint().is_err());
        assert!(Reader::new(&[5, 1], "t").count(32).is_err());
    }
}

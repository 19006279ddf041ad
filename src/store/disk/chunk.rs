//! A chunk: consecutive notifications of one channel appended in one write
//! transaction, stored as one `entries` value keyed by (channel id, offset
//! of its last notification). One B-tree insert per channel and commit
//! rather than one per notification: with many notifications per channel
//! in a group, the inserts were half of the writer's time.
//!
//! Encoding, little-endian: the offset of the first notification (u64),
//! then for each notification its time in ms (u64), the length of its
//! fields (u32) and the fields (UTF-8, the JSON members of the frame).
//! Offsets are implicit and consecutive. A chunk is never changed once
//! written; retention deletes whole chunks, and readers skip the
//! notifications of a chunk below the channel's first offset.

/// A chunk past this size is closed and the next notification of its
/// channel starts another, so reading a few recent notifications never
/// decodes a large value.
const MAX_BYTES: usize = 16 * 1024;

/// A chunk being filled.
#[derive(Debug)]
pub(super) struct Builder {
    buf: Vec<u8>,
    first: u64,
    count: u64,
}

impl Builder {
    /// An empty chunk whose first notification gets offset `first`.
    pub(super) fn new(first: u64) -> Self {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(&first.to_le_bytes());
        Self {
            buf,
            first,
            count: 0,
        }
    }

    /// Add the notification with the next offset.
    pub(super) fn push(&mut self, at_ms: u64, fields: &str) {
        let len = u32::try_from(fields.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&at_ms.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&fields.as_bytes()[..len as usize]);
        self.count += 1;
    }

    /// The offset of the last notification (the chunk's key); meaningful
    /// once one was pushed.
    pub(super) fn last(&self) -> u64 {
        self.first + self.count.saturating_sub(1)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(super) fn is_full(&self) -> bool {
        self.buf.len() >= MAX_BYTES
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The notifications of `chunk`: (offset, time in ms, fields).
pub(super) fn decode(chunk: &[u8]) -> Result<Records<'_>, redb::Error> {
    let (first, rest) = take(chunk, 8)?;
    Ok(Records {
        rest,
        next: u64::from_le_bytes(first.try_into().map_err(|_| corrupt())?),
    })
}

/// See [`decode`].
pub(super) struct Records<'a> {
    rest: &'a [u8],
    next: u64,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u64, u64, &'a str), redb::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let record = (|| {
            let (at, rest) = take(self.rest, 8)?;
            let (len, rest) = take(rest, 4)?;
            let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt())?) as usize;
            let (fields, rest) = take(rest, len)?;
            let fields = std::str::from_utf8(fields).map_err(|_| corrupt())?;
            self.rest = rest;
            Ok((
                u64::from_le_bytes(at.try_into().map_err(|_| corrupt())?),
                fields,
            ))
        })();
        match record {
            Ok((at_ms, fields)) => {
                let offset = self.next;
                self.next += 1;
                Some(Ok((offset, at_ms, fields)))
            }
            Err(e) => {
                // Nothing after a damaged record can be located.
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn take(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), redb::Error> {
    if bytes.len() < n {
        return Err(corrupt());
    }
    Ok(bytes.split_at(n))
}

fn corrupt() -> redb::Error {
    redb::Error::Corrupted("disk store: a damaged entries chunk".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_with_consecutive_offsets() {
        let mut b = Builder::new(41);
        assert!(b.is_empty());
        b.push(7, "\"title\":\"a\"");
        b.push(8, "");
        b.push(9, "\"title\":\"é\"");
        assert_eq!(b.last(), 43);
        let records: Vec<_> = decode(b.bytes())
            .expect("header")
            .collect::<Result<_, _>>()
            .expect("records");
        assert_eq!(
            records,
            [
                (41, 7, "\"title\":\"a\""),
                (42, 8, ""),
                (43, 9, "\"title\":\"é\"")
            ]
        );
    }

    #[test]
    fn a_chunk_closes_past_its_size() {
        let mut b = Builder::new(1);
        let fields = "x".repeat(1000);
        while !b.is_full() {
            b.push(1, &fields);
        }
        assert_eq!(b.last(), 17, "16 KiB of 1 KB notifications");
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let mut b = Builder::new(1);
        b.push(1, "\"title\":\"a\"");
        let bytes = b.bytes();
        for cut in 0..bytes.len() {
            let result: Result<Vec<_>, _> =
                decode(&bytes[..cut]).and_then(|records| records.collect());
            match result {
                Ok(records) => assert!(records.is_empty(), "cut at {cut}"),
                Err(e) => assert!(e.to_string().contains("damaged"), "{e}"),
            }
        }
        let mut bad = bytes.to_vec();
        let at = bad.len() - 1;
        bad[at] = 0xff;
        assert!(decode(&bad).expect("header").any(|r| r.is_err()));
    }
}

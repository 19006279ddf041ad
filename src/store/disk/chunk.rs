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
//!
//! Provenance rides in the fields slot, as the member it becomes in a frame:
//! `<fields>,"provenance":{…}`. The layout is the one herald wrote before it
//! kept provenance, so an older herald reads these chunks (its frames then
//! carry the member; clients ignore members they do not know), and chunks
//! written before read without provenance. The split back is unambiguous:
//! the provenance object is flat (three strings) and comes last, so a text
//! that has one ends with `}` and its last `"provenance":{"rule":` (a quote
//! inside a JSON string is escaped, so that text can only be a member)
//! starts it; the pipeline's fields end with `"priority":"…"`, so a text
//! without provenance never ends with `}`.

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
    pub(super) fn push(&mut self, at_ms: u64, fields: &str, provenance: Option<&str>) {
        let separator = if fields.is_empty() { "" } else { "," };
        let member = provenance.map_or(0, |p| separator.len() + MEMBER.len() + p.len());
        let len = u32::try_from(fields.len() + member).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&at_ms.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        let start = self.buf.len();
        self.buf.extend_from_slice(fields.as_bytes());
        if let Some(p) = provenance {
            self.buf.extend_from_slice(separator.as_bytes());
            self.buf.extend_from_slice(MEMBER.as_bytes());
            self.buf.extend_from_slice(p.as_bytes());
        }
        // A text over 4 GiB (never: notifications are bounded far below)
        // is cut, as before, rather than making the chunk unreadable.
        self.buf.truncate(start + len as usize);
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

/// How provenance starts in a stored text (see the module docs).
const MEMBER: &str = "\"provenance\":";

/// A stored text as (fields, provenance); see the module docs.
fn split(text: &str) -> (&str, Option<&str>) {
    if !text.ends_with('}') {
        return (text, None);
    }
    let Some(at) = text.rfind("\"provenance\":{\"rule\":") else {
        return (text, None);
    };
    let fields = &text[..at];
    let fields = match fields.strip_suffix(',') {
        Some(fields) => fields,
        None if fields.is_empty() => fields,
        None => return (text, None),
    };
    (fields, Some(&text[at + MEMBER.len()..]))
}

/// A stored notification: offset, time in ms, fields and provenance.
pub(super) type Record<'a> = (u64, u64, &'a str, Option<&'a str>);

/// The notifications of `chunk`.
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
    type Item = Result<Record<'a>, redb::Error>;

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
            Ok((at_ms, text)) => {
                let offset = self.next;
                self.next += 1;
                let (fields, provenance) = split(text);
                Some(Ok((offset, at_ms, fields, provenance)))
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
        b.push(7, "\"title\":\"a\"", None);
        b.push(8, "", None);
        b.push(9, "\"title\":\"é\"", None);
        assert_eq!(b.last(), 43);
        let records: Vec<_> = decode(b.bytes())
            .expect("header")
            .collect::<Result<_, _>>()
            .expect("records");
        assert_eq!(
            records,
            [
                (41, 7, "\"title\":\"a\"", None),
                (42, 8, "", None),
                (43, 9, "\"title\":\"é\"", None)
            ]
        );
    }

    const PROVENANCE: &str = r#"{"rule":"r","rules_version":"v","source":"http:t/x#0"}"#;

    #[test]
    fn provenance_comes_back_apart_from_the_fields() {
        // Data that itself holds a `provenance` member, and an old-style
        // text (no provenance) that ends like one but with priority last.
        let tricky = r#""title":"t","data":{"provenance":{"rule":"no"}},"priority":"normal""#;
        let mut b = Builder::new(1);
        b.push(1, tricky, Some(PROVENANCE));
        b.push(2, "", Some(PROVENANCE));
        b.push(3, tricky, None);
        let records: Vec<_> = decode(b.bytes())
            .expect("header")
            .collect::<Result<_, _>>()
            .expect("records");
        assert_eq!(
            records,
            [
                (1, 1, tricky, Some(PROVENANCE)),
                (2, 2, "", Some(PROVENANCE)),
                (3, 3, tricky, None),
            ]
        );
    }

    #[test]
    fn an_older_reader_sees_the_member_in_valid_json() {
        // What a herald without provenance support builds: `{` fields `}`.
        let mut b = Builder::new(1);
        b.push(1, "\"title\":\"t\"", Some(PROVENANCE));
        b.push(2, "", Some(PROVENANCE));
        let mut rest = &b.bytes()[8..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[8..12].try_into().expect("len")) as usize;
            let text = std::str::from_utf8(&rest[12..12 + len]).expect("utf-8");
            let v: serde_json::Value = serde_json::from_str(&format!("{{{text}}}")).expect("json");
            assert_eq!(v["provenance"]["rule"], "r");
            rest = &rest[12 + len..];
        }
    }

    #[test]
    fn a_chunk_closes_past_its_size() {
        let mut b = Builder::new(1);
        let fields = "x".repeat(1000);
        while !b.is_full() {
            b.push(1, &fields, None);
        }
        assert_eq!(b.last(), 17, "16 KiB of 1 KB notifications");
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let mut b = Builder::new(1);
        b.push(1, "\"title\":\"a\"", Some(PROVENANCE));
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

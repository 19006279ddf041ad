//! Redis replies read into herald's types: stream entries, the append
//! script's results and the read script's page.

use std::sync::Arc;

use redis::Value;

use crate::store::{Entry, Page};

/// One stream entry: its id and its fields in order.
#[derive(Debug)]
pub(super) struct StreamEntry {
    pub(super) id: String,
    pub(super) fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamEntry {
    pub(super) fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    pub(super) fn get_str(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.get(name)?).ok()
    }

    pub(super) fn get_u64(&self, name: &str) -> Option<u64> {
        self.get_str(name)?.parse().ok()
    }

    /// The offset in a log entry id `{offset}-0`.
    pub(super) fn offset(&self) -> Option<u64> {
        self.id.split('-').next()?.parse().ok()
    }
}

pub(super) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(&bytes(other)?).ok()?.parse().ok(),
    }
}

/// Entries of an `XRANGE`-shaped reply: `[[id, [field, value, ...]], ...]`.
pub(super) fn stream_entries(v: &Value) -> Vec<StreamEntry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = String::from_utf8(bytes(pair.first()?)?).ok()?;
            let Value::Array(flat) = pair.get(1)? else {
                return None;
            };
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((bytes(kv.first()?)?, bytes(kv.get(1)?)?)))
                .collect();
            Some(StreamEntry { id, fields })
        })
        .collect()
}

/// A stream id `ms-seq` as a comparable pair.
pub(super) fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

pub(super) fn live_entry(
    entry: &StreamEntry,
    names: &mut std::collections::HashMap<String, Arc<str>>,
) -> Option<Entry> {
    let channel = entry.get_str("c")?;
    let name = names
        .entry(channel.to_string())
        .or_insert_with(|| Arc::from(channel))
        .clone();
    Some(Entry {
        channel: name,
        epoch: entry.get_str("e")?.into(),
        offset: entry.get_u64("o")?,
        at_ms: entry.get_u64("t")?,
        fields: entry.get_str("f")?.into(),
        provenance: provenance(entry),
    })
}

/// An entry's provenance: absent in entries written before herald kept it
/// (and empty on the live feed for a notification without one).
fn provenance(entry: &StreamEntry) -> Option<String> {
    entry
        .get_str("p")
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

pub(super) fn parse_appended(v: Value, expected: usize) -> Result<Vec<(u64, bool)>, String> {
    let Value::Array(items) = v else {
        return Err(format!("append script answered {v:?}"));
    };
    if items.len() != expected {
        return Err(format!(
            "append script answered {} results for {expected} notifications",
            items.len()
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Value::Array(t) if t.len() == 3 => {
                let offset = t.get(1).and_then(int).ok_or("offset is not a number")?;
                let dup = t.get(2).and_then(int).ok_or("flag is not a number")?;
                Ok((offset, dup == 1))
            }
            other => Err(format!("append script result {other:?}")),
        })
        .collect()
}

pub(super) fn parse_page(channel: &str, v: Value) -> Result<Page, String> {
    let Value::Array(parts) = v else {
        return Err(format!("read script answered {v:?}"));
    };
    let epoch = parts
        .first()
        .and_then(bytes)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or("epoch missing")?;
    let last = parts.get(1).and_then(int).ok_or("last missing")?;
    let first = parts.get(2).and_then(int).ok_or("first missing")?;
    let epoch: Arc<str> = epoch.into();
    let name: Arc<str> = channel.into();
    let entries = parts
        .get(3)
        .map(stream_entries)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            Some(Arc::new(Entry {
                channel: name.clone(),
                epoch: epoch.clone(),
                offset: e.offset()?,
                at_ms: e.get_u64("t")?,
                fields: e.get_str("f")?.into(),
                provenance: provenance(e),
            }))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("malformed log entry")?;
    Ok(Page {
        epoch,
        first,
        last,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(stream_id("10-0") > stream_id("9-5"));
        assert!(stream_id("10-2") > stream_id("10-1"));
        assert_eq!(stream_id("junk"), (0, 0));
    }

    #[test]
    fn entries_parse_from_xrange_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"7-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"t".to_vec()),
                Value::BulkString(b"1700000000000".to_vec()),
                Value::BulkString(b"f".to_vec()),
                Value::BulkString(b"\"title\":\"x\"".to_vec()),
            ]),
        ])]);
        let page = parse_page(
            "user:1",
            Value::Array(vec![
                Value::BulkString(b"e1".to_vec()),
                Value::Int(7),
                Value::Int(7),
                reply,
            ]),
        )
        .expect("page");
        assert_eq!((page.first, page.last), (7, 7));
        assert_eq!(page.entries[0].offset, 7);
        assert_eq!(&*page.entries[0].epoch, "e1");
        assert_eq!(page.entries[0].fields, "\"title\":\"x\"");
        assert_eq!(
            page.entries[0].provenance, None,
            "an entry written before provenance reads without one"
        );
        assert!(parse_page("c", Value::Nil).is_err());
        assert!(parse_appended(Value::Array(vec![]), 1).is_err());
    }
}

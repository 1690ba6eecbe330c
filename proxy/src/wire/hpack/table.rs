//! HPACK's two tables (RFC 7541 §2.3): the static table of 61 common fields
//! and the dynamic table each side of a connection keeps, sized by the
//! decoder's `SETTINGS_HEADER_TABLE_SIZE` and evicting its oldest entries.

use bytes::Bytes;
use std::collections::VecDeque;

/// The static table, RFC 7541 Appendix A: index `i` is `STATIC[i - 1]`.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// How many entries the static table has: dynamic indexes start after it.
pub const STATIC_LEN: usize = STATIC.len();

/// What an entry costs in a table: its name and value and 32 octets.
pub fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// Where a field is in the static table: the index of an entry with its
/// name and value, else of the first with its name (`exact` says which).
pub fn find_static(name: &[u8], value: &[u8]) -> Option<StaticMatch> {
    // The entries with one name are adjacent: find the first, then scan on.
    let first = *STATIC_NAMES.get(name)?;
    let same_name = STATIC[first..]
        .iter()
        .take_while(|(n, _)| n.as_bytes() == name);
    for (offset, (_, v)) in same_name.enumerate() {
        if v.as_bytes() == value {
            return Some(StaticMatch {
                index: first + offset + 1,
                exact: true,
            });
        }
    }
    Some(StaticMatch {
        index: first + 1,
        exact: false,
    })
}

/// Each static name's first position in [`STATIC`]: one hash instead of
/// a scan of 61 names for every field sent.
static STATIC_NAMES: std::sync::LazyLock<foldhash::HashMap<&'static [u8], usize>> =
    std::sync::LazyLock::new(|| {
        let mut names = foldhash::HashMap::default();
        for (at, (name, _)) in STATIC.iter().enumerate() {
            names.entry(name.as_bytes()).or_insert(at);
        }
        names
    });

/// A static-table index and whether its value matched too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticMatch {
    pub index: usize,
    pub exact: bool,
}

/// A dynamic table: newest entry first, its size kept within `max_size`.
/// Entries carry an absolute index (the count of entries inserted before
/// them), which stays the same as newer entries push the relative one on.
#[derive(Debug)]
pub struct DynamicTable {
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    inserted: u64,
}

#[derive(Debug)]
pub struct Entry {
    pub name: Bytes,
    pub value: Bytes,
    pub absolute: u64,
}

impl DynamicTable {
    pub fn new(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size,
            inserted: 0,
        }
    }

    /// The entry at `index`, counted from 1 for the newest.
    pub fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index.checked_sub(1)?)
    }

    /// The relative index (from 1) of the entry with `absolute`, if it is
    /// still in the table.
    pub fn relative(&self, absolute: u64) -> Option<usize> {
        let newest = self.entries.front()?.absolute;
        let oldest = self.entries.back()?.absolute;
        (oldest..=newest)
            .contains(&absolute)
            .then(|| (newest - absolute) as usize + 1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Adds an entry, evicting the oldest as needed (each passed to
    /// `evicted`); an entry larger than the whole table empties it and is
    /// not added (RFC 7541 §4.4). Returns the new entry's absolute index.
    pub fn insert(
        &mut self,
        name: Bytes,
        value: Bytes,
        evicted: impl FnMut(&Entry),
    ) -> Option<u64> {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            self.evict_to(0, evicted);
            return None;
        }
        self.evict_to(self.max_size - size, evicted);
        let absolute = self.inserted;
        self.inserted += 1;
        self.size += size;
        self.entries.push_front(Entry {
            name,
            value,
            absolute,
        });
        Some(absolute)
    }

    /// A new maximum size, evicting what no longer fits.
    pub fn resize(&mut self, max_size: usize, evicted: impl FnMut(&Entry)) {
        self.max_size = max_size;
        self.evict_to(max_size, evicted);
    }

    fn evict_to(&mut self, size: usize, mut evicted: impl FnMut(&Entry)) {
        while self.size > size {
            let Some(entry) = self.entries.pop_back() else {
                break;
            };
            self.size -= entry_size(&entry.name, &entry.value);
            evicted(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_table_finds_exact_and_name_matches() {
        let find = |n: &str, v: &str| find_static(n.as_bytes(), v.as_bytes());
        assert_eq!(
            find(":method", "POST"),
            Some(StaticMatch {
                index: 3,
                exact: true
            })
        );
        assert_eq!(
            find(":method", "PUT"),
            Some(StaticMatch {
                index: 2,
                exact: false
            })
        );
        assert_eq!(
            find(":status", "500"),
            Some(StaticMatch {
                index: 14,
                exact: true
            })
        );
        assert_eq!(
            find("content-type", "application/grpc"),
            Some(StaticMatch {
                index: 31,
                exact: false
            })
        );
        assert_eq!(
            find("www-authenticate", ""),
            Some(StaticMatch {
                index: 61,
                exact: true
            })
        );
        assert_eq!(find("grpc-status", "0"), None);
    }

    #[test]
    fn entries_are_evicted_oldest_first_and_keep_their_absolute_index() {
        let mut table = DynamicTable::new(100);
        let mut gone = Vec::new();
        let field = |n: &'static str| {
            (
                Bytes::from_static(n.as_bytes()),
                Bytes::from_static(b"0123456789"),
            )
        };
        // Each entry costs 1 + 10 + 32 = 43: two fit in 100, not three.
        for name in ["a", "b", "c"] {
            let (n, v) = field(name);
            table.insert(n, v, |e| gone.push(e.absolute));
        }
        assert_eq!(gone, vec![0]);
        assert_eq!((table.len(), table.size()), (2, 86));
        assert_eq!(table.get(1).unwrap().name, "c");
        assert_eq!(table.get(2).unwrap().name, "b");
        assert!(table.get(3).is_none() && table.get(0).is_none());
        assert_eq!(
            (table.relative(2), table.relative(1), table.relative(0)),
            (Some(1), Some(2), None)
        );
        // Too large for the table: it empties it and is not added.
        let big = Bytes::from(vec![b'x'; 100]);
        assert_eq!(
            table.insert(big.clone(), big, |e| gone.push(e.absolute)),
            None
        );
        assert!(table.is_empty());
        assert_eq!(gone, vec![0, 1, 2]);
        // Shrinking evicts too.
        let (n, v) = field("d");
        assert_eq!(table.insert(n, v, |_| {}), Some(3));
        table.resize(40, |e| gone.push(e.absolute));
        assert!(table.is_empty() && table.size() == 0 && table.max_size() == 40);
        assert_eq!(gone, vec![0, 1, 2, 3]);
    }
}

//! HPACK (RFC 7541): the header compression of HTTP/2. [`Decoder`] turns a
//! header block into fields, keeping its dynamic table in step with the
//! peer's encoder; [`Encoder`] does the reverse for what we send. Both are
//! per connection and per direction.
//!
//! Decoded names and values are `Bytes`: a literal sent raw is a slice of
//! the block it came in, not a copy. Checking what a field may hold (lower
//! case names, no pseudo-headers after regular ones) is the HTTP layer's
//! work, not this module's.

pub mod huffman;
pub mod table;

use bytes::{Buf as _, BufMut, Bytes, BytesMut};
use foldhash::HashMap;
use table::{DynamicTable, Entry, STATIC, STATIC_LEN, entry_size, find_static};

/// The dynamic table size both sides start with (`SETTINGS_HEADER_TABLE_SIZE`'s
/// initial value).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// One header field. `never_index` is the "never indexed" representation
/// (RFC 7541 §6.2.3): a field so marked, such as a credential, must be sent
/// on marked by every intermediary, and is never put in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub value: Bytes,
    pub never_index: bool,
}

impl Field {
    pub fn new(name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            never_index: false,
        }
    }

    /// What the field counts towards `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub fn size(&self) -> usize {
        entry_size(&self.name, &self.value)
    }
}

/// Why a header block cannot be decoded: each is a connection error of type
/// `COMPRESSION_ERROR`, since the two tables can no longer agree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the header block ends inside a field")]
    Truncated,
    #[error("an integer in the header block is too large")]
    IntegerOverflow,
    #[error("index {0} is in neither table")]
    BadIndex(u64),
    #[error(transparent)]
    Huffman(#[from] huffman::HuffmanError),
    #[error("a dynamic table size update to {asked} is above the {allowed} allowed")]
    SizeUpdateTooLarge { asked: u64, allowed: usize },
    #[error("a dynamic table size update after the first field of a block")]
    SizeUpdateLate,
}

/// What a decoded block held, whether or not its fields were all kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The block's header list size (RFC 9113 §6.5.2).
    pub list_size: usize,
    /// The list was larger than the limit: fields past it were decoded,
    /// to keep the table in step, and dropped.
    pub over_limit: bool,
}

/// Decodes the header blocks one peer sends on one connection.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The table size we announced (`SETTINGS_HEADER_TABLE_SIZE`): the peer
    /// may ask for any size up to it.
    allowed: usize,
}

impl Decoder {
    pub fn new(allowed_table_size: usize) -> Self {
        Self {
            table: DynamicTable::new(allowed_table_size),
            allowed: allowed_table_size,
        }
    }

    /// Decodes a whole header block (HEADERS and any CONTINUATION payloads
    /// joined) onto `out`, keeping at most `max_list_size` of fields.
    pub fn decode(
        &mut self,
        block: &Bytes,
        max_list_size: usize,
        out: &mut Vec<Field>,
    ) -> Result<Decoded, HpackError> {
        let mut src = block.clone();
        let mut decoded = Decoded {
            list_size: 0,
            over_limit: false,
        };
        let mut first = true;
        while let Some(&byte) = src.first() {
            let field = if byte & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(&mut src, 7)?;
                let (name, value) = self.lookup(index)?;
                Field {
                    name,
                    value,
                    never_index: false,
                }
            } else if byte & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                let field = self.literal(&mut src, 6, false)?;
                self.table
                    .insert(field.name.clone(), field.value.clone(), |_| {});
                field
            } else if byte & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first
                // field of a block.
                if !first {
                    return Err(HpackError::SizeUpdateLate);
                }
                let asked = integer(&mut src, 5)?;
                if asked > self.allowed as u64 {
                    return Err(HpackError::SizeUpdateTooLarge {
                        asked,
                        allowed: self.allowed,
                    });
                }
                self.table.resize(asked as usize, |_| {});
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                self.literal(&mut src, 4, byte & 0x10 != 0)?
            };
            first = false;
            decoded.list_size += field.size();
            if decoded.list_size > max_list_size {
                decoded.over_limit = true;
            } else {
                out.push(field);
            }
        }
        Ok(decoded)
    }

    fn lookup(&self, index: u64) -> Result<(Bytes, Bytes), HpackError> {
        let bad = || HpackError::BadIndex(index);
        let index = usize::try_from(index).map_err(|_| bad())?;
        match index {
            0 => Err(bad()),
            1..=STATIC_LEN => {
                let (name, value) = STATIC[index - 1];
                Ok((
                    Bytes::from_static(name.as_bytes()),
                    Bytes::from_static(value.as_bytes()),
                ))
            }
            _ => {
                let entry = self.table.get(index - STATIC_LEN).ok_or_else(bad)?;
                Ok((entry.name.clone(), entry.value.clone()))
            }
        }
    }

    /// A literal field whose name index has `prefix` bits (0: a literal name follows).
    fn literal(&self, src: &mut Bytes, prefix: u8, never_index: bool) -> Result<Field, HpackError> {
        let index = integer(src, prefix)?;
        let name = if index == 0 {
            string(src)?
        } else {
            self.lookup(index)?.0
        };
        let value = string(src)?;
        Ok(Field {
            name,
            value,
            never_index,
        })
    }

    #[cfg(test)]
    fn table(&self) -> &DynamicTable {
        &self.table
    }
}

/// An integer with an N-bit prefix (§5.1), the rest of the first byte
/// being the representation's flags. Values past 2^32 are refused: no
/// length or index that large can be honest.
fn integer(src: &mut Bytes, prefix: u8) -> Result<u64, HpackError> {
    let max_prefix = (1u64 << prefix) - 1;
    let first = src.first().ok_or(HpackError::Truncated)?;
    let mut value = u64::from(*first) & max_prefix;
    src.advance(1);
    if value < max_prefix {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        // Five continuation bytes carry 35 bits; a sixth only pads (or
        // would shift past 64 bits).
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        let byte = *src.first().ok_or(HpackError::Truncated)?;
        src.advance(1);
        value += u64::from(byte & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// A string literal (§5.2): raw, as a slice of the block, or Huffman-coded.
fn string(src: &mut Bytes) -> Result<Bytes, HpackError> {
    let huffman = src.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(src, 7)? as usize;
    if len > src.len() {
        return Err(HpackError::Truncated);
    }
    let raw = src.split_to(len);
    if !huffman {
        return Ok(raw);
    }
    let mut out = BytesMut::new();
    huffman::decode(&raw, &mut out)?;
    Ok(out.freeze())
}

fn put_integer(dst: &mut BytesMut, flags: u8, prefix: u8, value: usize) {
    let max_prefix = (1usize << prefix) - 1;
    if value < max_prefix {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

/// Huffman-coded when that is shorter.
fn put_string(dst: &mut BytesMut, value: &[u8]) {
    let coded = huffman::encoded_len(value);
    if coded < value.len() {
        put_integer(dst, 0x80, 7, coded);
        huffman::encode(value, dst);
    } else {
        put_integer(dst, 0, 7, value.len());
        dst.put_slice(value);
    }
}

/// Fields whose values change from message to message: indexing each would
/// only push useful entries out of the table, so only the first is (for
/// later ones to name it).
fn changes_every_time(name: &[u8]) -> bool {
    matches!(
        name,
        b"grpc-timeout" | b"content-length" | b"date" | b"x-request-id" | b"traceparent"
    )
}

/// Encodes the header blocks we send to one peer on one connection.
#[derive(Debug)]
pub struct Encoder {
    table: DynamicTable,
    /// The absolute index of the newest entry with each (name, value), and
    /// with each name, by their hash ([`Keys`]); a hit is checked against
    /// the entry, so a collision is only a miss. Keyed by hash so that a
    /// lookup neither copies nor clones the field.
    by_field: HashMap<u64, u64>,
    by_name: HashMap<u64, u64>,
    keys: Keys,
    /// The table sizes to announce at the start of the next block: the
    /// smallest the peer allowed since the last block, then the last.
    size_updates: Option<(usize, usize)>,
    /// The most table we keep, whatever the peer allows.
    cap: usize,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_SIZE)
    }
}

impl Encoder {
    /// An encoder that keeps at most `cap` octets of table, whatever the
    /// peer allows; the peer's initial allowance is the default 4,096.
    pub fn new(cap: usize) -> Self {
        let size = cap.min(DEFAULT_TABLE_SIZE);
        let mut encoder = Self {
            table: DynamicTable::new(DEFAULT_TABLE_SIZE),
            by_field: HashMap::default(),
            by_name: HashMap::default(),
            keys: Keys::default(),
            size_updates: None,
            cap,
        };
        if size != DEFAULT_TABLE_SIZE {
            encoder.resize(size);
        }
        encoder
    }

    /// The peer's `SETTINGS_HEADER_TABLE_SIZE` changed.
    pub fn peer_allows(&mut self, table_size: usize) {
        self.resize(table_size.min(self.cap));
    }

    fn resize(&mut self, size: usize) {
        // Peers repeat their table size in every SETTINGS: no news, no update.
        if size == self.table.max_size() && self.size_updates.is_none() {
            return;
        }
        let smallest = match self.size_updates {
            Some((smallest, _)) => smallest.min(size),
            None => size,
        };
        self.size_updates = Some((smallest, size));
        let (by_field, by_name, keys) = (&mut self.by_field, &mut self.by_name, &self.keys);
        self.table
            .resize(size, |entry| forget(by_field, by_name, keys, entry));
    }

    /// Appends the block for `fields` to `dst`.
    pub fn encode<'a>(&mut self, fields: impl IntoIterator<Item = &'a Field>, dst: &mut BytesMut) {
        if let Some((smallest, last)) = self.size_updates.take() {
            if smallest != last {
                put_integer(dst, 0x20, 5, smallest);
            }
            put_integer(dst, 0x20, 5, last);
        }
        for field in fields {
            self.encode_field(field, dst);
        }
    }

    fn encode_field(&mut self, field: &Field, dst: &mut BytesMut) {
        let (name, value) = (&field.name, &field.value);
        let in_static = find_static(name, value);
        if !field.never_index {
            if let Some(found) = in_static.filter(|m| m.exact) {
                return put_integer(dst, 0x80, 7, found.index);
            }
            if let Some(relative) = self.dynamic_index(name, Some(value)) {
                return put_integer(dst, 0x80, 7, relative);
            }
        }
        let name_index = in_static
            .map(|m| m.index)
            .or_else(|| self.dynamic_index(name, None));
        let churns = changes_every_time(name) && name_index.is_some();
        let index =
            !field.never_index && !churns && entry_size(name, value) <= self.table.max_size() / 2;
        let (flags, prefix) = match (index, field.never_index) {
            (true, _) => (0x40, 6),
            (false, true) => (0x10, 4),
            (false, false) => (0x00, 4),
        };
        match name_index {
            Some(at) => put_integer(dst, flags, prefix, at),
            None => {
                put_integer(dst, flags, prefix, 0);
                put_string(dst, name);
            }
        }
        put_string(dst, value);
        if index {
            let (by_field, by_name, keys) = (&mut self.by_field, &mut self.by_name, &self.keys);
            if let Some(absolute) = self.table.insert(name.clone(), value.clone(), |entry| {
                forget(by_field, by_name, keys, entry)
            }) {
                by_field.insert(keys.of(name, Some(value)), absolute);
                by_name.insert(keys.of(name, None), absolute);
            }
        }
    }

    /// The index (static entries first) of the newest dynamic entry with
    /// `name` and, if given, `value`.
    fn dynamic_index(&self, name: &[u8], value: Option<&[u8]>) -> Option<usize> {
        let map = if value.is_some() {
            &self.by_field
        } else {
            &self.by_name
        };
        let absolute = *map.get(&self.keys.of(name, value))?;
        let relative = self.table.relative(absolute)?;
        let entry = self.table.get(relative)?;
        let same = entry.name == name && value.is_none_or(|value| entry.value == value);
        same.then_some(STATIC_LEN + relative)
    }
}

/// The hashes the encoder's maps are keyed by: of a name, or of a name and
/// a value.
#[derive(Debug, Default)]
struct Keys(foldhash::fast::FixedState);

impl Keys {
    fn of(&self, name: &[u8], value: Option<&[u8]>) -> u64 {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut hasher = self.0.build_hasher();
        hasher.write(name);
        if let Some(value) = value {
            // Not a byte a name may hold: ("ab", "c") and ("a", "bc") differ.
            hasher.write_u8(0xff);
            hasher.write(value);
        }
        hasher.finish()
    }
}

/// An evicted entry leaves the maps, unless they point at a newer copy.
fn forget(
    by_field: &mut HashMap<u64, u64>,
    by_name: &mut HashMap<u64, u64>,
    keys: &Keys,
    entry: &Entry,
) {
    let field = keys.of(&entry.name, Some(&entry.value));
    if by_field.get(&field) == Some(&entry.absolute) {
        by_field.remove(&field);
    }
    let name = keys.of(&entry.name, None);
    if by_name.get(&name) == Some(&entry.absolute) {
        by_name.remove(&name);
    }
}

#[cfg(test)]
mod tests;

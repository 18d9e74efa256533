//! A reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`), cut to the questions `layout.rs`
//! asks: whether a struct exists, the byte offset and size of a struct member (through anonymous
//! members and array elements), the value of an enumerator, whether a function exists, and the
//! parameter types of a function or raw-tracepoint typedef.
//!
//! Why our own: Rust eBPF has no CO-RE relocations (aya issue 349), so the offsets the programs
//! use come from the running kernel's BTF at start. The crates that read BTF do not do this job:
//! - aya-obj 0.3 (the `Btf` aya loads programs with, already linked in) parses the same file,
//!   but its `types()`, `type_by_id` and `string_at` and the fields of its `Struct`, `Enum` and
//!   `BtfMember` are `pub(crate)`: from outside one can find a type id by name and nothing more.
//! - btf-rs does member lookups but is LGPL-2.1-or-later; lqtrace is MIT OR Apache-2.0 and ships
//!   as one static binary, which would carry LGPL's relinking terms. Not used.
//!
//! Robustness: every read goes through bounds-checked helpers; the parser checks the header,
//! that every type's records fit its section, and that every type id and name offset is in
//! range, so a corrupt file fails at once with one line ("BTF file X is truncated: ..."). Walks
//! that could loop on hostile input (typedef cycles, structs containing themselves as anonymous
//! members) are fenced by depth and visit limits and fail with one line too. Only little-endian
//! BTF. Names are looked up in a hash index made while parsing (hashbrown's `HashTable` of type
//! ids, so no name is copied); reading and parsing vmlinux (5.5 MB, 127k types) takes ~7 ms
//! here, as long as the reader this replaced took.

use std::{hash::BuildHasher as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use hashbrown::{DefaultHashBuilder, HashTable};

mod parse;

// BTF_KIND_* (include/uapi/linux/btf.h).
const INT: u8 = 1;
const PTR: u8 = 2;
const ARRAY: u8 = 3;
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const ENUM: u8 = 6;
const FWD: u8 = 7;
const TYPEDEF: u8 = 8;
const VOLATILE: u8 = 9;
const CONST: u8 = 10;
const RESTRICT: u8 = 11;
const FUNC: u8 = 12;
const FUNC_PROTO: u8 = 13;
const VAR: u8 = 14;
const DATASEC: u8 = 15;
const FLOAT: u8 = 16;
const DECL_TAG: u8 = 17;
const TYPE_TAG: u8 = 18;
const ENUM64: u8 = 19;

/// Longest typedef/qualifier/array chain followed; real ones are < 10.
const MAX_CHAIN: usize = 64;
/// Deepest nesting of anonymous struct/union members searched.
const MAX_ANON_DEPTH: usize = 32;
/// Member records one name search may visit (a DAG of anonymous members could be exponential).
const MAX_MEMBER_VISITS: usize = 1_000_000;
/// BTF does not record pointer width; lqtrace reads the BTF of the kernel it runs on.
const POINTER_SIZE: u64 = size_of::<usize>() as u64;

/// Byte offset and byte size of a struct member, from [`Btf::member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

/// One type: its 12-byte header and where its trailing records start in `Btf::data`.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    info: u32,
    /// `size` or `type` depending on the kind.
    size_or_type: u32,
    extra: usize,
}

impl Type {
    fn kind(&self) -> u8 {
        ((self.info >> 24) & 0x1f) as u8
    }
    fn kind_flag(&self) -> bool {
        self.info & 0x8000_0000 != 0
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
}

fn is_modifier(kind: u8) -> bool {
    matches!(kind, TYPEDEF..=RESTRICT | TYPE_TAG)
}

/// Little-endian u32 at `off`, 0 when out of range (the parser checked every offset it lets
/// lookups read, so the fallback never changes a result on valid input).
fn le32(bytes: &[u8], off: usize) -> u32 {
    bytes
        .get(off..off.saturating_add(4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Parsed BTF: the bytes, where every type starts, and the name index.
pub struct Btf {
    data: Vec<u8>,
    /// Index = type id; entry 0 stands for `void`.
    types: Vec<Type>,
    strings: (usize, usize),
    /// By the hash of their name: (id, 0) for the structs, unions, typedefs and functions,
    /// (id, i + 1) for the i-th enumerator of enum `id`. Names compared in place.
    names: HashTable<(u32, u32)>,
    hasher: DefaultHashBuilder,
}

impl Btf {
    /// Reads and parses a BTF file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Btf> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow!("cannot read BTF file {}: {e}", path.display()))?;
        Btf::parse_owned(bytes).map_err(|e| anyhow!("BTF file {} {e}", path.display()))
    }

    /// Parses raw BTF bytes. Never panics; any inconsistency is an error.
    pub fn parse(bytes: &[u8]) -> Result<Btf> {
        Btf::parse_owned(bytes.to_vec()).map_err(|e| anyhow!("BTF data {e}"))
    }

    /// The name of an index entry (empty when out of range).
    fn key_name(&self, (id, sub): (u32, u32)) -> &[u8] {
        let Some(t) = self.entry(id) else { return &[] };
        match sub.checked_sub(1) {
            None => self.str_at(t.name_off),
            Some(i) => {
                let rec_len = if t.kind() == ENUM64 { 12 } else { 8 };
                let rec = self.records(t, rec_len).nth(i as usize);
                rec.map_or(&[], |r| self.str_at(le32(r, 0)))
            }
        }
    }

    /// Index entries named `name`, lowest id first.
    fn lookup<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (u32, u32)> + 'a {
        let hash = self.hasher.hash_one(name.as_bytes());
        let mut keys: Vec<(u32, u32)> = self.names.iter_hash(hash).copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter(move |&k| self.key_name(k) == name.as_bytes())
    }

    /// The first type of these kinds (structs, unions, typedefs, functions) named `name`.
    fn named(&self, kinds: &[u8], name: &str) -> Option<u32> {
        let mut types = self.lookup(name).filter(|&(_, sub)| sub == 0);
        types
            .find(|&(id, _)| kinds.contains(&self.kind(id)))
            .map(|(id, _)| id)
    }

    /// Whether a struct or union of this name exists.
    pub fn has_struct(&self, name: &str) -> bool {
        self.named(&[STRUCT, UNION], name).is_some()
    }

    /// Byte offset from the start of struct/union `type_name` and byte size of member `path`:
    /// dot-separated steps, each a member name optionally indexed (`__sk_common.skc_net`,
    /// `args[1]`). Anonymous members are searched through, typedefs and qualifiers followed;
    /// pointers are not (the programs must read them). Bitfields have no byte offset: error.
    pub fn member(&self, type_name: &str, path: &str) -> Result<Member> {
        let root = self
            .named(&[STRUCT, UNION], type_name)
            .with_context(|| format!("BTF has no struct or union named `{type_name}`"))?;
        self.member_in(root, path)
            .with_context(|| format!("BTF: cannot resolve {type_name}.{path}"))
    }

    fn member_in(&self, root: u32, path: &str) -> Result<Member> {
        let (mut ty, mut bits) = (root, 0u64);
        for step in path.split('.') {
            let (name, index) = match step.strip_suffix(']').and_then(|s| s.split_once('[')) {
                Some((name, i)) => (name, Some(i.parse::<u64>().context("bad array index")?)),
                None => (step, None),
            };
            if name.is_empty() {
                bail!("the path has an empty step");
            }
            let outer = self.skip_modifiers(ty)?;
            if !matches!(self.kind(outer), STRUCT | UNION) {
                bail!("{} is not a struct or union", self.describe(ty));
            }
            let (offset, m) = self
                .find_member(outer, name.as_bytes(), 0, &mut 0)?
                .with_context(|| format!("{} has no member `{name}`", self.describe(outer)))?;
            if let Some(width) = self.bitfield_width(m) {
                bail!("`{name}` is a {width}-bit bitfield, which has no byte offset");
            }
            bits = bits.saturating_add(offset);
            ty = m.0;
            if let Some(i) = index {
                let array = self.skip_modifiers(ty)?;
                let Some(t) = self.entry(array).filter(|t| t.kind() == ARRAY) else {
                    bail!("`{name}` is {}, not an array", self.describe(ty));
                };
                let (elem, len) = (le32(&self.data, t.extra), le32(&self.data, t.extra + 8));
                // A flexible array (`args[]`, length 0) has as many elements as the record.
                if len != 0 && i >= u64::from(len) {
                    bail!("index {i} is past the end of `{name}` ({len} elements)");
                }
                let stride = self.type_size(elem)?.saturating_mul(8);
                bits = bits.saturating_add(i.saturating_mul(stride));
                ty = elem;
            }
        }
        if !bits.is_multiple_of(8) {
            bail!("the member starts at bit {bits}, not on a byte boundary");
        }
        let offset = u32::try_from(bits / 8).context("the offset does not fit in 32 bits")?;
        let size =
            u32::try_from(self.type_size(ty)?).context("the size does not fit in 32 bits")?;
        Ok(Member { offset, size })
    }

    /// Value of an enumerator, searched in every ENUM and ENUM64 (anonymous ones included).
    /// `kind_flag` marks signed enums; unsigned 64-bit values above i64::MAX wrap.
    pub fn enum_value(&self, enumerator: &str) -> Result<i64> {
        let mut keys = self.lookup(enumerator).filter(|&(_, sub)| sub != 0);
        let Some((t, rec)) = keys.find_map(|(id, sub)| {
            let t = self.entry(id)?;
            let rec_len = if t.kind() == ENUM64 { 12 } else { 8 };
            Some((t, self.records(t, rec_len).nth(sub as usize - 1)?))
        }) else {
            bail!("BTF has no enumerator `{enumerator}`")
        };
        let lo = le32(rec, 4);
        Ok(match (t.kind(), t.kind_flag()) {
            (ENUM, true) => i64::from(lo as i32),
            (ENUM, false) => i64::from(lo),
            _ => (u64::from(lo) | (u64::from(le32(rec, 8)) << 32)) as i64,
        })
    }

    /// Whether the kernel has a function of this name (a BTF FUNC).
    /// The BTF type id of function `name` (what a fentry program's `attach_btf_id` names).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.named(&[FUNC], name)
    }

    pub fn has_func(&self, name: &str) -> bool {
        self.named(&[FUNC], name).is_some()
    }

    /// C types of the parameters of FUNC `name`, or of function-pointer TYPEDEF `name` (raw
    /// tracepoints are described by `btf_trace_<event>` typedefs), e.g. `["void *", "struct
    /// sk_buff *"]`; a variadic tail is `"..."`.
    pub fn func_params(&self, name: &str) -> Result<Vec<String>> {
        let start = match (self.named(&[FUNC], name), self.named(&[TYPEDEF], name)) {
            (Some(func), _) => self.entry(func).map_or(0, |t| t.size_or_type),
            (None, Some(typedef)) => {
                let target = self.skip_modifiers(typedef)?;
                match self.entry(target) {
                    Some(t) if t.kind() == PTR => t.size_or_type,
                    _ => target,
                }
            }
            (None, None) => bail!("BTF has no function or typedef named `{name}`"),
        };
        let proto = self.skip_modifiers(start)?;
        let Some(t) = self.entry(proto).filter(|t| t.kind() == FUNC_PROTO) else {
            bail!("`{name}` is {}, not a function", self.describe(proto));
        };
        // BTF encodes a variadic `...` as a last parameter of type void.
        let param = |rec: &[u8]| match le32(rec, 4) {
            0 => "...".to_string(),
            ty => self.describe(ty),
        };
        Ok(self.records(t, 8).map(param).collect())
    }

    // ----- helpers -----

    fn entry(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize).filter(|_| id != 0)
    }

    fn kind(&self, id: u32) -> u8 {
        self.entry(id).map_or(0, Type::kind)
    }

    /// The NUL-terminated string at `off` in the string section (empty when out of range).
    fn str_at(&self, off: u32) -> &[u8] {
        let start = self.strings.0.saturating_add(off as usize);
        let tail = self.data.get(start..self.strings.1).unwrap_or(&[]);
        tail.split(|&b| b == 0).next().unwrap_or(&[])
    }

    /// Whether the string at `off` is `name` (compared in place: lookups scan many names).
    fn str_is(&self, off: u32, name: &[u8]) -> bool {
        let start = self.strings.0.saturating_add(off as usize);
        let end = start.saturating_add(name.len());
        let s = self.data.get(start..=end).filter(|_| end < self.strings.1);
        s.and_then(<[u8]>::split_last) == Some((&0, name))
    }

    /// Trailing records of `t`, `rec_len` bytes each (members, enumerators, parameters).
    fn records(&self, t: &Type, rec_len: usize) -> std::slice::ChunksExact<'_, u8> {
        let end = t.extra.saturating_add(t.vlen() * rec_len);
        let bytes = self.data.get(t.extra..end).unwrap_or(&[]);
        bytes.chunks_exact(rec_len)
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn skip_modifiers(&self, mut id: u32) -> Result<u32> {
        for _ in 0..MAX_CHAIN {
            match self.entry(id) {
                Some(t) if is_modifier(t.kind()) => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        bail!("type [{id}] is in a typedef/qualifier chain longer than {MAX_CHAIN} (a cycle?)")
    }

    /// Member `name` of composite `id`, searched through anonymous struct/union members: its
    /// bit offset from the start of `id`, its type and its bitfield width (0 if not one).
    fn find_member(
        &self,
        id: u32,
        name: &[u8],
        depth: usize,
        visits: &mut usize,
    ) -> Result<Option<(u64, (u32, u32))>> {
        if depth > MAX_ANON_DEPTH {
            bail!("anonymous members nest deeper than {MAX_ANON_DEPTH} levels (a cycle?)");
        }
        let Some(t) = self.entry(id) else {
            return Ok(None);
        };
        for rec in self.records(t, 12) {
            *visits += 1;
            if *visits > MAX_MEMBER_VISITS {
                bail!("searching {} visits too many members", self.describe(id));
            }
            let raw = le32(rec, 8);
            // With kind_flag set, the offset word is (bitfield_size << 24 | bit_offset).
            let (bit_offset, bitfield) = match t.kind_flag() {
                true => (raw & 0x00ff_ffff, raw >> 24),
                false => (raw, 0),
            };
            let m = (le32(rec, 4), bitfield);
            if self.str_is(le32(rec, 0), name) {
                return Ok(Some((u64::from(bit_offset), m)));
            }
            if !self.str_is(le32(rec, 0), b"") {
                continue;
            }
            let inner = self.skip_modifiers(m.0)?;
            if matches!(self.kind(inner), STRUCT | UNION)
                && let Some((off, found)) = self.find_member(inner, name, depth + 1, visits)?
            {
                return Ok(Some((u64::from(bit_offset) + off, found)));
            }
        }
        Ok(None)
    }

    /// Width in bits if the member is a bitfield: explicitly (kind_flag encoding) or, in
    /// old-style BTF, an INT whose bit count or bit offset does not fill its bytes.
    fn bitfield_width(&self, (type_id, bitfield): (u32, u32)) -> Option<u32> {
        if bitfield != 0 {
            return Some(bitfield);
        }
        let t = self.entry(self.skip_modifiers(type_id).ok()?)?;
        let encoding = le32(&self.data, t.extra);
        let (bits, bit_off) = (encoding & 0xff, (encoding >> 16) & 0xff);
        let full = u64::from(t.size_or_type) * 8;
        (t.kind() == INT && (bit_off != 0 || u64::from(bits) != full)).then_some(bits)
    }

    /// Size in bytes of a type: arrays multiply, pointers are the host's pointer size.
    fn type_size(&self, mut id: u32) -> Result<u64> {
        let mut multiplier: u64 = 1;
        for _ in 0..MAX_CHAIN {
            let Some(t) = self.entry(id) else {
                bail!("the member has type void, which has no size");
            };
            let size = match t.kind() {
                INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => u64::from(t.size_or_type),
                PTR => POINTER_SIZE,
                ARRAY => {
                    let len = le32(&self.data, t.extra + 8);
                    multiplier = multiplier
                        .checked_mul(len.into())
                        .context("an array size overflows")?;
                    id = le32(&self.data, t.extra);
                    continue;
                }
                k if is_modifier(k) => {
                    id = t.size_or_type;
                    continue;
                }
                _ => bail!("{} has no size", self.describe(id)),
            };
            return multiplier
                .checked_mul(size)
                .with_context(|| format!("the size of {} overflows", self.describe(id)));
        }
        bail!("type [{id}] is in a chain longer than {MAX_CHAIN}")
    }

    /// C spelling of a type as lqtrace compares and prints it: qualifiers and pointers around
    /// a named type (`const struct sock *`, `char * const`); array and function types are only
    /// called so (`array`, `function *`).
    fn describe(&self, mut id: u32) -> String {
        let (mut prefix, mut stars) = (String::new(), String::new());
        for _ in 0..MAX_CHAIN {
            let t = self.entry(id);
            let next = t.map_or(0, |t| t.size_or_type);
            let tag = match t.map(|t| (t.kind(), t.kind_flag())) {
                None => "void",
                Some((PTR, _)) => {
                    stars.insert(0, '*');
                    id = next;
                    continue;
                }
                Some((k @ (CONST | VOLATILE | RESTRICT), _)) => {
                    let q = match k {
                        CONST => "const",
                        VOLATILE => "volatile",
                        _ => "restrict",
                    };
                    match self.kind(next) {
                        PTR => stars.insert_str(0, &format!(" {q}")),
                        _ => prefix.push_str(&format!("{q} ")),
                    }
                    id = next;
                    continue;
                }
                Some((TYPE_TAG, _)) => {
                    id = next;
                    continue;
                }
                Some((STRUCT, _) | (FWD, false)) => "struct ",
                Some((UNION, _) | (FWD, true)) => "union ",
                Some((ENUM | ENUM64, _)) => "enum ",
                Some((ARRAY, _)) => "array",
                Some((FUNC_PROTO, _)) => "function",
                _ => "",
            };
            let name = t.map_or(&[][..], |t| self.str_at(t.name_off));
            // Escaped: a name from a hostile file must not break the one-line error.
            let name = match String::from_utf8_lossy(name).escape_debug().to_string() {
                n if n.is_empty() && tag.ends_with(' ') => "(anon)".into(),
                n => n,
            };
            let space = if stars.is_empty() { "" } else { " " };
            return format!("{prefix}{tag}{name}{space}{stars}");
        }
        "(type chain too long)".to_string()
    }
}

#[cfg(test)]
mod tests;

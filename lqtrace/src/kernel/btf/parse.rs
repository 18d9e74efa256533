//! Turning bytes into a checked [`Btf`]: the header, one pass over the type section, the
//! validation of every reference, and the name index.

use super::*;

/// `struct btf_header` up to `str_len`; newer kernels may append fields (hdr_len says).
const HEADER_LEN: usize = 24;
/// Most types and enumerators that may share a name.
const MAX_SAME_NAME: usize = 64;

/// Bytes of records after the header of a type of this kind; None for an unknown kind.
fn trailing_len(kind: u8, vlen: usize) -> Option<usize> {
    Some(match kind {
        INT | VAR | DECL_TAG => 4,
        ARRAY => 12,
        STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen,
        ENUM | FUNC_PROTO => 8 * vlen,
        PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
        _ => return None,
    })
}

impl Btf {
    /// Errors are the part of the message after "BTF file <path>": "is truncated: ...".
    pub(super) fn parse_owned(data: Vec<u8>) -> Result<Btf> {
        let (types_at, strings) = parse_header(&data)?;
        match data.get(strings.0..strings.1).unwrap_or(&[]) {
            [] => bail!("is invalid: the string section is empty"),
            [0, .., 0] | [0] => {}
            [0, ..] => bail!("is invalid: the string section does not end with a NUL"),
            _ => bail!("is invalid: the string section does not start with a NUL"),
        }
        let mut btf = Btf {
            types: scan_types(&data, types_at)?,
            data,
            strings,
            names: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        };
        btf.validate()?;
        let mut names = HashTable::with_capacity(btf.types.len());
        let hash = |key: &(u32, u32)| btf.hasher.hash_one(btf.key_name(*key));
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            let subs = match t.kind() {
                STRUCT | UNION | TYPEDEF | FUNC => 0..1,
                ENUM | ENUM64 => 1..t.vlen() as u32 + 1,
                _ => continue,
            };
            // Equal names share a probe sequence, so inserting n of them costs n²: skip the
            // anonymous ones (thousands) and refuse more than MAX_SAME_NAME of any other
            // (vmlinux has at most 7), so no file can make this crawl.
            for key in subs.map(|sub| (id as u32, sub)) {
                let name = btf.key_name(key);
                if name.is_empty() {
                    continue;
                }
                let h = btf.hasher.hash_one(name);
                let same = names.iter_hash(h).filter(|&&k| btf.key_name(k) == name);
                if same.count() >= MAX_SAME_NAME {
                    let name = String::from_utf8_lossy(name);
                    bail!(
                        "is invalid: more than {MAX_SAME_NAME} types or enumerators named {name:?}"
                    );
                }
                names.insert_unique(h, key, hash);
            }
        }
        btf.names = names;
        Ok(btf)
    }

    /// Every type id and name offset a type refers to must be in range, so that a corrupt
    /// file fails here with one line rather than later with a confusing lookup error.
    fn validate(&self) -> Result<()> {
        let (types, str_len) = (self.types.len(), self.strings.1 - self.strings.0);
        for (id, t) in self.types.iter().enumerate().skip(1) {
            let check = |name: Option<u32>, ty: Option<u32>| -> Result<()> {
                if let Some(off) = name.filter(|&off| off as usize >= str_len) {
                    bail!(
                        "is invalid: type [{id}] has name offset {off}, past the {str_len}-byte string section"
                    );
                }
                if let Some(ty) = ty.filter(|&ty| ty as usize >= types) {
                    bail!(
                        "is invalid: type [{id}] refers to type id {ty}, past the last ({})",
                        types - 1
                    );
                }
                Ok(())
            };
            // PTR, TYPEDEF..=VAR and the tags: the header's third word is a type id.
            let refers = matches!(t.kind(), PTR | TYPEDEF..=VAR | DECL_TAG | TYPE_TAG);
            check(Some(t.name_off), refers.then_some(t.size_or_type))?;
            if t.kind() == ARRAY {
                let (elem, index) = (le32(&self.data, t.extra), le32(&self.data, t.extra + 4));
                check(None, Some(elem))?;
                check(None, Some(index))?;
                continue;
            }
            // Records: (length, whether a name is at 0, where a type id is).
            let (rec_len, named, type_at) = match t.kind() {
                STRUCT | UNION => (12, true, Some(4)),
                FUNC_PROTO => (8, true, Some(4)),
                ENUM => (8, true, None),
                ENUM64 => (12, true, None),
                DATASEC => (12, false, Some(0)),
                _ => continue,
            };
            for r in self.records(t, rec_len) {
                check(named.then(|| le32(r, 0)), type_at.map(|at| le32(r, at)))?;
            }
        }
        Ok(())
    }
}

type Range = (usize, usize);

/// Checks the header; returns the absolute (start, end) of the type and string sections.
fn parse_header(data: &[u8]) -> Result<(Range, Range)> {
    if data.is_empty() {
        bail!("is empty");
    }
    if data.len() < HEADER_LEN {
        bail!(
            "is truncated: {} bytes is shorter than the {HEADER_LEN}-byte BTF header",
            data.len()
        );
    }
    match (data[0], data[1]) {
        (0x9f, 0xeb) => {}
        (0xeb, 0x9f) => bail!("is big-endian; only little-endian BTF is supported"),
        (lo, hi) => bail!(
            "is not BTF: magic is {:#06x}, expected 0xeb9f",
            u16::from_le_bytes([lo, hi])
        ),
    }
    if data[2] != 1 {
        bail!("has unsupported BTF version {} (expected 1)", data[2]);
    }
    let hdr_len = le32(data, 4) as usize;
    if hdr_len < HEADER_LEN || hdr_len > data.len() {
        bail!(
            "is invalid: header length {hdr_len} (file: {} bytes)",
            data.len()
        );
    }
    let section = |name: &str, at: usize| -> Result<Range> {
        let start = hdr_len as u64 + u64::from(le32(data, at));
        let end = start + u64::from(le32(data, at + 4));
        if end > data.len() as u64 {
            bail!(
                "is truncated: the {name} section ends at {end} but the file has {} bytes",
                data.len()
            );
        }
        Ok((start as usize, end as usize))
    };
    Ok((section("type", 8)?, section("string", 16)?))
}

/// Walks the type section once, recording where each type and its records start.
fn scan_types(data: &[u8], (start, end): Range) -> Result<Vec<Type>> {
    // Most vmlinux types have few records: ~20 bytes per type is a fair capacity guess.
    let mut types = Vec::with_capacity((end - start) / 20 + 1);
    types.push(Type {
        name_off: 0,
        info: 0,
        size_or_type: 0,
        extra: 0,
    });
    let mut pos = start;
    while pos < end {
        let id = types.len();
        if end - pos < 12 {
            bail!("is truncated: type [{id}] at byte {pos} does not fit before byte {end}");
        }
        let t = Type {
            name_off: le32(data, pos),
            info: le32(data, pos + 4),
            size_or_type: le32(data, pos + 8),
            extra: pos + 12,
        };
        let Some(len) = trailing_len(t.kind(), t.vlen()) else {
            bail!(
                "is invalid: type [{id}] at byte {pos} has unknown kind {}",
                t.kind()
            );
        };
        pos = t.extra + len;
        if pos > end {
            bail!(
                "is truncated: type [{id}] (kind {}, vlen {}) ends at byte {pos}, past the type section ({end})",
                t.kind(),
                t.vlen()
            );
        }
        types.push(t);
    }
    Ok(types)
}

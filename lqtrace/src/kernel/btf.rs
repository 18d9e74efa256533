//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs have no CO-RE relocations, so lqtrace resolves the struct offsets it needs
//! (e.g. `sock.__sk_common.skc_net`) from the running kernel's BTF at start and hands them to
//! the BPF programs. aya parses BTF but exposes no member lookup, hence this module.
//!
//! The parser copies the blob, records where every type starts, validates every type id and
//! string offset once, and builds a name index; all lookups afterwards read the blob with
//! bounds-checked helpers, so no input (truncated, garbage, cyclic) can make them panic or hang.
//! Only little-endian BTF is supported (that is what every x86-64/arm64 kernel ships).

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Where the running kernel exposes its own BTF (needs `CONFIG_DEBUG_INFO_BTF=y`).
pub const VMLINUX_PATH: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xEB9F;
/// The magic as read by a little-endian reader from a big-endian blob.
const MAGIC_SWAPPED: u16 = 0x9FEB;
const VERSION: u8 = 1;
/// `struct btf_header` up to and including `str_len`; newer kernels may append fields.
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_HEADER_LEN: usize = 12;
/// Longest typedef/const/pointer/array chain we follow. Real chains are < 10 long; the parser
/// rejects cycles, this is a second fence.
const MAX_CHAIN: usize = 64;
/// Deepest nesting of anonymous struct/union members searched for a member name.
const MAX_ANON_DEPTH: usize = 32;
/// Upper bound on member records visited by one member-name search, so a malicious DAG of
/// anonymous members (each containing two copies of the next) cannot take exponential time.
const MAX_MEMBER_VISITS: usize = 1_000_000;
/// Upper bound on type nodes rendered by one type description.
const RENDER_BUDGET: usize = 256;
/// BTF does not record pointer width; lqtrace only reads the BTF of the kernel it runs on.
const POINTER_SIZE: u64 = size_of::<usize>() as u64;

/// Errors from reading BTF or looking something up in it. Every message is one line.
#[derive(Debug)]
pub enum BtfError {
    /// The BTF file does not exist: the kernel was built without `CONFIG_DEBUG_INFO_BTF`.
    Missing { path: PathBuf },
    /// The BTF file exists but cannot be read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes are not valid BTF. `origin` is "BTF file <path>" or "BTF data";
    /// `problem` starts with a verb ("is truncated: ...").
    Malformed { origin: String, problem: String },
    /// A named type, enumerator or function does not exist.
    NotFound(String),
    /// A member path cannot be turned into a byte offset.
    Member {
        type_name: String,
        path: String,
        problem: String,
    },
    /// The type graph cannot be followed (cycle, unsized type, wrong kind).
    BadType(String),
}

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BtfError::Missing { path } => write!(
                f,
                "BTF file {} does not exist: the running kernel was built without \
                 CONFIG_DEBUG_INFO_BTF=y, which lqtrace needs to find kernel struct layouts",
                path.display()
            ),
            BtfError::Io { path, source } => {
                write!(f, "cannot read BTF file {}: {source}", path.display())
            }
            BtfError::Malformed { origin, problem } => write!(f, "{origin} {problem}"),
            BtfError::NotFound(msg) | BtfError::BadType(msg) => f.write_str(msg),
            BtfError::Member {
                type_name,
                path,
                problem,
            } => {
                write!(
                    f,
                    "cannot resolve member `{path}` of {type_name}: {problem}"
                )
            }
        }
    }
}

impl std::error::Error for BtfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BtfError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Byte offset and byte size of a struct member, as returned by [`Btf::member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

/// BTF kinds 1..=19 (`BTF_KIND_*` in include/uapi/linux/btf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// Bytes of kind-specific data following the 12-byte type header.
    fn trailing_len(self, vlen: usize) -> usize {
        match self {
            Kind::Int | Kind::Var | Kind::DeclTag => 4,
            Kind::Array => 12,
            Kind::Struct | Kind::Union | Kind::Datasec | Kind::Enum64 => 12 * vlen,
            Kind::Enum | Kind::FuncProto => 8 * vlen,
            Kind::Ptr
            | Kind::Fwd
            | Kind::Typedef
            | Kind::Volatile
            | Kind::Const
            | Kind::Restrict
            | Kind::Func
            | Kind::Float
            | Kind::TypeTag => 0,
        }
    }

    /// Whether the header's third word is a type id (rather than a size or nothing).
    fn refers_to_type(self) -> bool {
        matches!(
            self,
            Kind::Ptr
                | Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::Func
                | Kind::FuncProto
                | Kind::Var
                | Kind::DeclTag
                | Kind::TypeTag
        )
    }

    /// Kinds that only qualify or rename another type; looked through to reach a struct.
    fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }

    fn is_composite(self) -> bool {
        matches!(self, Kind::Struct | Kind::Union)
    }
}

/// One type's header plus where its trailing records start in `Btf::data`.
#[derive(Debug, Clone, Copy)]
struct TypeEntry {
    kind: Kind,
    kind_flag: bool,
    vlen: u16,
    name_off: u32,
    /// `size` or `type` depending on the kind.
    size_or_type: u32,
    /// Absolute offset of the trailing data in `Btf::data`.
    extra: usize,
}

/// A struct/union member record, with the bitfield encoding already decoded.
#[derive(Debug, Clone, Copy)]
struct RawMember {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

/// Parsed BTF: the raw bytes plus an index of type positions and names.
pub struct Btf {
    data: Vec<u8>,
    /// Index = type id; entry 0 is a placeholder for `void`.
    types: Vec<TypeEntry>,
    strings_start: usize,
    strings_end: usize,
    /// Type names.
    names: NameIndex,
    /// Enumerator names (id = the ENUM/ENUM64, sub = the enumerator's index).
    enumerators: NameIndex,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("types", &self.type_count())
            .finish()
    }
}

/// Little-endian u32 at `off`, or 0 if out of range. Lookups only read offsets the parser has
/// already bounds-checked, so the fallback never changes a result on valid input.
fn le32(bytes: &[u8], off: usize) -> u32 {
    bytes
        .get(off..off.saturating_add(4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le16(bytes: &[u8], off: usize) -> u16 {
    bytes
        .get(off..off.saturating_add(2))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

/// Hash used by the name indexes (FxHash-style: fast, no DoS concern for kernel BTF). The
/// high half is folded in because the multiply mixes the high bits best.
fn name_hash(name: &[u8]) -> u32 {
    let mut h: u64 = 0;
    for &b in name {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    (h ^ (h >> 32)) as u32
}

/// Open-addressing multimap from a name hash to (type id, record index) pairs, built once at
/// parse time. A single flat table avoids one allocation per name, which keeps parsing vmlinux
/// in a few ms. Entries with equal names keep insertion (= type id) order along the probe.
#[derive(Default)]
struct NameIndex {
    slots: Vec<Slot>,
    mask: usize,
}

/// `id == 0` marks an empty slot (type id 0 is void and has no name).
#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u32,
    id: u32,
    /// Record index inside the type (enumerators); 0 for the type's own name.
    sub: u32,
}

impl NameIndex {
    fn build(entries: &[Slot]) -> NameIndex {
        let cap = entries.len().saturating_mul(2).max(16).next_power_of_two();
        let mut index = NameIndex {
            slots: vec![Slot::default(); cap],
            mask: cap - 1,
        };
        for entry in entries {
            let mut i = (entry.hash as usize) & index.mask;
            // The table is at most half full, so this always finds a free slot.
            while let Some(slot) = index.slots.get_mut(i) {
                if slot.id == 0 {
                    *slot = *entry;
                    break;
                }
                i = (i + 1) & index.mask;
            }
        }
        index
    }

    /// Slots whose hash matches `name_hash(name)`; the caller still compares the names.
    fn candidates(&self, hash: u32) -> impl Iterator<Item = Slot> + '_ {
        let mut i = (hash as usize) & self.mask;
        let mut remaining = self.slots.len();
        std::iter::from_fn(move || {
            while remaining > 0 {
                remaining -= 1;
                let slot = *self.slots.get(i)?;
                if slot.id == 0 {
                    return None;
                }
                i = (i + 1) & self.mask;
                if slot.hash == hash {
                    return Some(slot);
                }
            }
            None
        })
    }
}

impl Btf {
    /// Reads and parses the running kernel's BTF from [`VMLINUX_PATH`].
    pub fn from_kernel() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new(VMLINUX_PATH))
    }

    /// Reads and parses a BTF file. A missing file means the kernel lacks BTF.
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BtfError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                BtfError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Btf::parse_inner(bytes).map_err(|problem| BtfError::Malformed {
            origin: format!("BTF file {}", path.display()),
            problem,
        })
    }

    /// Parses raw BTF bytes. Never panics; any inconsistency is an error.
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        Btf::parse_inner(bytes.to_vec()).map_err(|problem| BtfError::Malformed {
            origin: "BTF data".to_string(),
            problem,
        })
    }

    /// Number of types, not counting `void` (id 0).
    pub fn type_count(&self) -> usize {
        self.types.len().saturating_sub(1)
    }

    /// The parser proper; errors are the part of the message after "BTF file <path>".
    fn parse_inner(data: Vec<u8>) -> Result<Btf, String> {
        let (types_range, strings_range) = parse_header(&data)?;
        check_strings(&data, strings_range.0, strings_range.1)?;
        let types = scan_types(&data, types_range.0, types_range.1)?;
        let mut btf = Btf {
            data,
            types,
            strings_start: strings_range.0,
            strings_end: strings_range.1,
            names: NameIndex::default(),
            enumerators: NameIndex::default(),
        };
        btf.validate_references()?;
        btf.check_chain_cycles()?;
        btf.build_indexes();
        Ok(btf)
    }

    /// Size in bytes of the named struct or union (or a typedef of one).
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        let id = self.find_composite(name)?;
        Ok(self.entry(id).map_or(0, |t| t.size_or_type))
    }

    /// Byte offset (from the start of struct/union `type_name`) and byte size of member
    /// `path`, a dot-separated path like `"__sk_common.skc_net"`. Anonymous struct/union
    /// members are searched transparently; typedefs and qualifiers are followed between steps.
    /// Errors name the full path if a step is missing, is a bitfield, or is not a struct/union
    /// where another step follows (pointers are not followed: the BPF side must read them).
    pub fn member(&self, type_name: &str, path: &str) -> Result<Member, BtfError> {
        let root = self.find_composite(type_name)?;
        let fail = |problem: String| BtfError::Member {
            type_name: self.describe(root),
            path: path.to_string(),
            problem,
        };
        let mut current = root;
        let mut bits: u64 = 0;
        let mut last_type = root;
        let steps: Vec<&str> = path.split('.').collect();
        for (i, step) in steps.iter().enumerate() {
            if step.is_empty() {
                return Err(fail("the path has an empty step".to_string()));
            }
            if i > 0 {
                current = self
                    .composite_for_step(last_type, &steps[..i])
                    .map_err(&fail)?;
            }
            let (offset, m) = self
                .find_member(current, step.as_bytes())
                .map_err(&fail)?
                .ok_or_else(|| {
                    fail(format!("{} has no member `{step}`", self.describe(current)))
                })?;
            if let Some(width) = self.bitfield_width(&m) {
                return Err(fail(format!(
                    "`{step}` is a {width}-bit bitfield, which has no byte offset"
                )));
            }
            bits = bits.saturating_add(offset);
            last_type = m.type_id;
        }
        if !bits.is_multiple_of(8) {
            return Err(fail(format!(
                "the member starts at bit {bits}, not on a byte boundary"
            )));
        }
        let offset = u32::try_from(bits / 8)
            .map_err(|_| fail(format!("the offset {} does not fit in 32 bits", bits / 8)))?;
        let size = self.type_size(last_type).map_err(&fail)?;
        let size = u32::try_from(size)
            .map_err(|_| fail(format!("the size {size} does not fit in 32 bits")))?;
        Ok(Member { offset, size })
    }

    /// Value of an enumerator, searching every ENUM and ENUM64 (anonymous ones included).
    pub fn enum_value(&self, enumerator: &str) -> Result<i64, BtfError> {
        let name = enumerator.as_bytes();
        self.enumerators
            .candidates(name_hash(name))
            .find(|slot| self.enumerator_name(slot.id, slot.sub) == name)
            .and_then(|slot| self.enumerator_value(slot.id, slot.sub))
            .ok_or_else(|| BtfError::NotFound(format!("BTF has no enumerator `{enumerator}`")))
    }

    /// Value of `enumerator` in the enum named `enum_name` (ENUM or ENUM64).
    pub fn enum_value_in(&self, enum_name: &str, enumerator: &str) -> Result<i64, BtfError> {
        let mut found_enum = false;
        for id in self.ids_named(enum_name.as_bytes()) {
            if !matches!(
                self.entry(id).map(|t| t.kind),
                Some(Kind::Enum | Kind::Enum64)
            ) {
                continue;
            }
            found_enum = true;
            if let Some(value) = self.enumerator_in(id, enumerator.as_bytes()) {
                return Ok(value);
            }
        }
        Err(BtfError::NotFound(if found_enum {
            format!("enum {enum_name} has no enumerator `{enumerator}`")
        } else {
            format!("BTF has no enum named `{enum_name}`")
        }))
    }

    /// True if a BTF FUNC with this name exists (i.e. the kernel has this function).
    pub fn has_func(&self, name: &str) -> bool {
        self.ids_named(name.as_bytes())
            .any(|id| self.entry(id).is_some_and(|t| t.kind == Kind::Func))
    }

    /// Parameters of the prototype of FUNC `name`, or of the function pointer TYPEDEF `name`
    /// (raw tracepoints are described by `btf_trace_<event>` typedefs). Returns
    /// `(param_name, type_description)` pairs, e.g. `("", "struct sk_buff *")`; unnamed
    /// parameters have an empty name, a variadic tail is `("", "...")`.
    pub fn func_params(&self, name: &str) -> Result<Vec<(String, String)>, BtfError> {
        let proto = self.find_proto(name)?;
        let Some(t) = self.entry(proto) else {
            return Err(BtfError::BadType(format!(
                "`{name}` has no function prototype"
            )));
        };
        let params = self
            .records(t, 8)
            .map(|rec| {
                let (name_off, type_id) = (le32(rec, 0), le32(rec, 4));
                let pname = String::from_utf8_lossy(self.str_at(name_off)).into_owned();
                // BTF encodes a variadic `...` as a final nameless parameter of type void.
                let desc = if type_id == 0 {
                    "...".to_string()
                } else {
                    self.describe(type_id)
                };
                (pname, desc)
            })
            .collect();
        Ok(params)
    }

    /// C-like description of a type id, e.g. "struct sk_buff *", "unsigned int".
    pub fn type_description(&self, id: u32) -> String {
        self.describe(id)
    }

    // ----- lookups -----

    fn entry(&self, id: u32) -> Option<&TypeEntry> {
        if id == 0 {
            return None;
        }
        self.types.get(id as usize)
    }

    /// The NUL-terminated string at `off` in the string section (empty if out of range).
    fn str_at(&self, off: u32) -> &[u8] {
        let start = self.strings_start.saturating_add(off as usize);
        let tail = self.data.get(start..self.strings_end).unwrap_or(&[]);
        let len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        tail.get(..len).unwrap_or(&[])
    }

    fn name_of(&self, id: u32) -> &[u8] {
        self.entry(id).map_or(&[][..], |t| self.str_at(t.name_off))
    }

    /// Trailing records of `t`, `rec_len` bytes each (members, enumerators, params...).
    fn records(&self, t: &TypeEntry, rec_len: usize) -> std::slice::ChunksExact<'_, u8> {
        let len = usize::from(t.vlen) * rec_len;
        self.data
            .get(t.extra..t.extra.saturating_add(len))
            .unwrap_or(&[])
            .chunks_exact(rec_len.max(1))
    }

    fn members(&self, t: &TypeEntry) -> impl Iterator<Item = RawMember> + '_ {
        let kind_flag = t.kind_flag;
        self.records(t, 12).map(move |rec| {
            let raw_offset = le32(rec, 8);
            // With kind_flag set, the offset word packs (bitfield_size << 24 | bit_offset).
            let (bit_offset, bitfield_size) = if kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            RawMember {
                name_off: le32(rec, 0),
                type_id: le32(rec, 4),
                bit_offset,
                bitfield_size,
            }
        })
    }

    /// All type ids whose name is exactly `name`.
    fn ids_named<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = u32> + 'a {
        self.names
            .candidates(name_hash(name))
            .filter(move |slot| self.name_of(slot.id) == name)
            .map(|slot| slot.id)
    }

    /// The named STRUCT/UNION, or failing that a TYPEDEF of that name that leads to one.
    fn find_composite(&self, name: &str) -> Result<u32, BtfError> {
        let kind_of = |id: u32| self.entry(id).map(|t| t.kind);
        if let Some(id) = self
            .ids_named(name.as_bytes())
            .find(|&id| kind_of(id).is_some_and(Kind::is_composite))
        {
            return Ok(id);
        }
        for id in self.ids_named(name.as_bytes()) {
            if kind_of(id) == Some(Kind::Typedef) {
                let target = self.skip_modifiers(id).map_err(BtfError::BadType)?;
                if kind_of(target).is_some_and(Kind::is_composite) {
                    return Ok(target);
                }
            }
        }
        Err(BtfError::NotFound(format!(
            "BTF has no struct or union named `{name}`"
        )))
    }

    /// The FUNC_PROTO behind FUNC `name` or function-pointer TYPEDEF `name`.
    fn find_proto(&self, name: &str) -> Result<u32, BtfError> {
        let candidates: Vec<u32> = self.ids_named(name.as_bytes()).collect();
        let func = candidates
            .iter()
            .copied()
            .find(|&id| self.entry(id).is_some_and(|t| t.kind == Kind::Func));
        let typedef = candidates
            .iter()
            .copied()
            .find(|&id| self.entry(id).is_some_and(|t| t.kind == Kind::Typedef));
        let start = match (func, typedef) {
            (Some(f), _) => self.entry(f).map_or(0, |t| t.size_or_type),
            (None, Some(td)) => {
                let target = self.skip_modifiers(td).map_err(BtfError::BadType)?;
                match self.entry(target) {
                    Some(t) if t.kind == Kind::Ptr => t.size_or_type,
                    _ => target,
                }
            }
            (None, None) => {
                return Err(BtfError::NotFound(format!(
                    "BTF has no function or typedef named `{name}`"
                )));
            }
        };
        let proto = self.skip_modifiers(start).map_err(BtfError::BadType)?;
        match self.entry(proto) {
            Some(t) if t.kind == Kind::FuncProto => Ok(proto),
            _ => Err(BtfError::BadType(format!(
                "`{name}` is not a function or function pointer but {}",
                self.describe(proto)
            ))),
        }
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn skip_modifiers(&self, mut id: u32) -> Result<u32, String> {
        for _ in 0..MAX_CHAIN {
            match self.entry(id) {
                Some(t) if t.kind.is_modifier() => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(format!(
            "type [{id}] is part of a typedef/qualifier chain longer than {MAX_CHAIN}"
        ))
    }

    /// The struct/union that the member reached by `done` (type `type_id`) must be so that the
    /// next step can be looked up in it.
    fn composite_for_step(&self, type_id: u32, done: &[&str]) -> Result<u32, String> {
        let id = self.skip_modifiers(type_id)?;
        match self.entry(id) {
            Some(t) if t.kind.is_composite() => Ok(id),
            Some(t) if t.kind == Kind::Ptr => Err(format!(
                "`{}` is a pointer ({}), not a struct or union; pointers cannot be followed \
                 with a byte offset",
                done.join("."),
                self.describe(type_id)
            )),
            _ => Err(format!(
                "`{}` is {}, not a struct or union",
                done.join("."),
                self.describe(type_id)
            )),
        }
    }

    /// Finds member `name` of composite `id`, looking inside anonymous struct/union members.
    /// Returns the member's bit offset from the start of `id` and its record.
    fn find_member(&self, id: u32, name: &[u8]) -> Result<Option<(u64, RawMember)>, String> {
        let mut visits = 0usize;
        self.find_member_at(id, name, 0, &mut visits)
    }

    fn find_member_at(
        &self,
        id: u32,
        name: &[u8],
        depth: usize,
        visits: &mut usize,
    ) -> Result<Option<(u64, RawMember)>, String> {
        if depth > MAX_ANON_DEPTH {
            return Err(format!(
                "anonymous members nest deeper than {MAX_ANON_DEPTH} levels (a type cycle?)"
            ));
        }
        let Some(t) = self.entry(id) else {
            return Ok(None);
        };
        for m in self.members(t) {
            *visits += 1;
            if *visits > MAX_MEMBER_VISITS {
                return Err(format!(
                    "searching {} visits too many members",
                    self.describe(id)
                ));
            }
            let member_name = self.str_at(m.name_off);
            if member_name == name {
                return Ok(Some((u64::from(m.bit_offset), m)));
            }
            if !member_name.is_empty() {
                continue;
            }
            let inner = self.skip_modifiers(m.type_id)?;
            if self.entry(inner).is_some_and(|t| t.kind.is_composite())
                && let Some((off, found)) = self.find_member_at(inner, name, depth + 1, visits)?
            {
                return Ok(Some((u64::from(m.bit_offset) + off, found)));
            }
        }
        Ok(None)
    }

    /// Width in bits if the member is a bitfield: either explicitly (kind_flag encoding) or,
    /// in old-style BTF, an INT type whose bit count or bit offset does not fill its bytes.
    fn bitfield_width(&self, m: &RawMember) -> Option<u32> {
        if m.bitfield_size != 0 {
            return Some(m.bitfield_size);
        }
        let id = self.skip_modifiers(m.type_id).ok()?;
        let t = self.entry(id)?;
        if t.kind != Kind::Int {
            return None;
        }
        let encoding = le32(&self.data, t.extra);
        let (bits, bit_off) = (encoding & 0xff, (encoding >> 16) & 0xff);
        let full = u64::from(t.size_or_type) * 8;
        (bit_off != 0 || u64::from(bits) != full).then_some(bits)
    }

    /// Size in bytes of a type (arrays multiply, pointers are the host pointer size).
    fn type_size(&self, mut id: u32) -> Result<u64, String> {
        let mut multiplier: u64 = 1;
        for _ in 0..MAX_CHAIN {
            let Some(t) = self.entry(id) else {
                return Err("the member has type void, which has no size".to_string());
            };
            let scale = |size: u64| {
                multiplier
                    .checked_mul(size)
                    .ok_or_else(|| format!("the size of {} overflows", self.describe(id)))
            };
            match t.kind {
                Kind::Int
                | Kind::Struct
                | Kind::Union
                | Kind::Enum
                | Kind::Enum64
                | Kind::Float
                | Kind::Datasec => return scale(u64::from(t.size_or_type)),
                Kind::Ptr => return scale(POINTER_SIZE),
                Kind::Array => {
                    let nelems = le32(&self.data, t.extra.saturating_add(8));
                    multiplier = scale(u64::from(nelems))?;
                    id = le32(&self.data, t.extra);
                }
                Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::TypeTag
                | Kind::Var => id = t.size_or_type,
                Kind::Fwd | Kind::Func | Kind::FuncProto | Kind::DeclTag => {
                    return Err(format!("{} has no size", self.describe(id)));
                }
            }
        }
        Err(format!(
            "type [{id}] is part of a chain longer than {MAX_CHAIN}"
        ))
    }

    /// Value of `name` if type `id` is an ENUM/ENUM64 containing it.
    fn enumerator_in(&self, id: u32, name: &[u8]) -> Option<i64> {
        let count = self.entry(id).map_or(0, |t| u32::from(t.vlen));
        (0..count)
            .find(|&i| self.enumerator_name(id, i) == name)
            .and_then(|i| self.enumerator_value(id, i))
    }

    /// The `index`-th enumerator record of ENUM/ENUM64 `id`.
    fn enumerator_record(&self, id: u32, index: u32) -> Option<(&TypeEntry, &[u8])> {
        let t = self.entry(id)?;
        let rec_len = match t.kind {
            Kind::Enum => 8,
            Kind::Enum64 => 12,
            _ => return None,
        };
        self.records(t, rec_len)
            .nth(index as usize)
            .map(|rec| (t, rec))
    }

    fn enumerator_name(&self, id: u32, index: u32) -> &[u8] {
        self.enumerator_record(id, index)
            .map_or(&[][..], |(_, rec)| self.str_at(le32(rec, 0)))
    }

    /// `kind_flag` marks signed enums; unsigned 64-bit values above i64::MAX wrap (no kernel
    /// enumerator lqtrace uses is that large).
    fn enumerator_value(&self, id: u32, index: u32) -> Option<i64> {
        let (t, rec) = self.enumerator_record(id, index)?;
        Some(match t.kind {
            Kind::Enum if t.kind_flag => i64::from(le32(rec, 4) as i32),
            Kind::Enum => i64::from(le32(rec, 4)),
            _ => (u64::from(le32(rec, 4)) | (u64::from(le32(rec, 8)) << 32)) as i64,
        })
    }

    // ----- type descriptions -----

    fn describe(&self, id: u32) -> String {
        let mut budget = RENDER_BUDGET;
        self.declarator(id, String::new(), &mut budget)
    }

    /// Renders type `id` around the declarator text `inner` the way C does, so a pointer to a
    /// function prints as "int (*)(unsigned int)" and matches bpftool's C output.
    fn declarator(&self, id: u32, inner: String, budget: &mut usize) -> String {
        if *budget == 0 {
            return join_declarator("...", &inner);
        }
        *budget -= 1;
        let Some(t) = self.entry(id) else {
            return join_declarator("void", &inner);
        };
        let name = String::from_utf8_lossy(self.str_at(t.name_off));
        let named = |prefix: &str| {
            let name = if name.is_empty() { "(anon)" } else { &name };
            join_declarator(&format!("{prefix} {name}"), &inner)
        };
        match t.kind {
            Kind::Ptr => {
                let mut star = if inner.is_empty() || inner.starts_with(['*', '(']) {
                    format!("*{inner}")
                } else {
                    format!("* {inner}")
                };
                let target_kind = self.entry(t.size_or_type).map(|t| t.kind);
                if matches!(target_kind, Some(Kind::Array | Kind::FuncProto)) {
                    star = format!("({star})");
                }
                self.declarator(t.size_or_type, star, budget)
            }
            Kind::Array => {
                let nelems = le32(&self.data, t.extra.saturating_add(8));
                let elem = le32(&self.data, t.extra);
                self.declarator(elem, format!("{inner}[{nelems}]"), budget)
            }
            Kind::FuncProto => {
                let mut params: Vec<String> = Vec::new();
                for rec in self.records(t, 8) {
                    let ty = le32(rec, 4);
                    let mut sub = RENDER_BUDGET.min(*budget);
                    params.push(if ty == 0 {
                        "...".to_string()
                    } else {
                        self.declarator(ty, String::new(), &mut sub)
                    });
                    *budget = sub;
                }
                let params = if params.is_empty() {
                    "void".to_string()
                } else {
                    params.join(", ")
                };
                self.declarator(t.size_or_type, format!("{inner}({params})"), budget)
            }
            Kind::Const | Kind::Volatile | Kind::Restrict => {
                let qualifier = match t.kind {
                    Kind::Const => "const",
                    Kind::Volatile => "volatile",
                    _ => "restrict",
                };
                // A qualified pointer is written after the star: "char * const".
                if self
                    .entry(t.size_or_type)
                    .is_some_and(|t| t.kind == Kind::Ptr)
                {
                    self.declarator(t.size_or_type, join_declarator(qualifier, &inner), budget)
                } else {
                    let base = self.declarator(t.size_or_type, inner, budget);
                    format!("{qualifier} {base}")
                }
            }
            Kind::TypeTag => self.declarator(t.size_or_type, inner, budget),
            Kind::Struct => named("struct"),
            Kind::Union => named("union"),
            Kind::Enum | Kind::Enum64 => named("enum"),
            Kind::Fwd => named(if t.kind_flag { "union" } else { "struct" }),
            Kind::Int
            | Kind::Float
            | Kind::Typedef
            | Kind::Func
            | Kind::Var
            | Kind::Datasec
            | Kind::DeclTag => join_declarator(&name, &inner),
        }
    }

    // ----- parse-time validation -----

    /// Checks every type id and string offset a type refers to, so lookups can trust them.
    fn validate_references(&self) -> Result<(), String> {
        for (id, t) in self.types.iter().enumerate().skip(1) {
            let at = |what: &'static str, index: Option<usize>| Where {
                id,
                kind: t.kind,
                what,
                index,
            };
            self.check_name(t.name_off, at("name", None))?;
            if t.kind.refers_to_type() {
                self.check_type(t.size_or_type, at("target", None))?;
            }
            match t.kind {
                Kind::Array => {
                    self.check_type(le32(&self.data, t.extra), at("element", None))?;
                    self.check_type(le32(&self.data, t.extra + 4), at("index", None))?;
                }
                Kind::Struct | Kind::Union => {
                    for (i, rec) in self.records(t, 12).enumerate() {
                        self.check_name(le32(rec, 0), at("member", Some(i)))?;
                        self.check_type(le32(rec, 4), at("member", Some(i)))?;
                    }
                }
                // btf_var_secinfo is (type, offset, size): no name.
                Kind::Datasec => {
                    for (i, rec) in self.records(t, 12).enumerate() {
                        self.check_type(le32(rec, 0), at("variable", Some(i)))?;
                    }
                }
                Kind::FuncProto => {
                    for (i, rec) in self.records(t, 8).enumerate() {
                        self.check_name(le32(rec, 0), at("parameter", Some(i)))?;
                        self.check_type(le32(rec, 4), at("parameter", Some(i)))?;
                    }
                }
                Kind::Enum => {
                    for (i, rec) in self.records(t, 8).enumerate() {
                        self.check_name(le32(rec, 0), at("enumerator", Some(i)))?;
                    }
                }
                Kind::Enum64 => {
                    for (i, rec) in self.records(t, 12).enumerate() {
                        self.check_name(le32(rec, 0), at("enumerator", Some(i)))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_type(&self, ty: u32, at: Where) -> Result<(), String> {
        if (ty as usize) < self.types.len() {
            return Ok(());
        }
        Err(format!(
            "is invalid: {at} refers to type id {ty}, but the last type id is {}",
            self.types.len() - 1
        ))
    }

    fn check_name(&self, off: u32, at: Where) -> Result<(), String> {
        let str_len = self.strings_end - self.strings_start;
        if (off as usize) < str_len {
            return Ok(());
        }
        Err(format!(
            "is invalid: {at} has name offset {off}, past the end of the {str_len}-byte string \
             section"
        ))
    }

    /// Rejects cycles through typedef/qualifier/pointer/array links (e.g. `typedef A A`). Every
    /// such type has one successor, so one linear walk per type with a colouring finds them.
    fn check_chain_cycles(&self) -> Result<(), String> {
        let next = |id: u32| -> u32 {
            match self.entry(id) {
                Some(t) if t.kind.is_modifier() || t.kind == Kind::Ptr => t.size_or_type,
                Some(t) if t.kind == Kind::Array => le32(&self.data, t.extra),
                _ => 0,
            }
        };
        // 0 = unvisited; otherwise the id of the walk that reached the type first.
        let mut walk_of = vec![0u32; self.types.len()];
        for start in 1..self.types.len() as u32 {
            let mut id = start;
            while id != 0 {
                match walk_of.get_mut(id as usize) {
                    Some(w) if *w == 0 => *w = start,
                    // Reached during this walk: the chain loops.
                    Some(w) if *w == start => {
                        return Err(format!(
                            "is invalid: type [{id}] is part of a reference cycle \
                             (typedef/qualifier/pointer/array chain that loops)"
                        ));
                    }
                    // Reached by an earlier walk, which ended without a loop.
                    _ => break,
                }
                id = next(id);
            }
        }
        Ok(())
    }

    fn build_indexes(&mut self) {
        let mut types = Vec::new();
        let mut enumerators = Vec::new();
        for (id, t) in self.types.iter().enumerate().skip(1) {
            let id = id as u32;
            if t.name_off != 0 {
                types.push(Slot {
                    hash: name_hash(self.str_at(t.name_off)),
                    id,
                    sub: 0,
                });
            }
            if matches!(t.kind, Kind::Enum | Kind::Enum64) {
                for sub in 0..u32::from(t.vlen) {
                    let hash = name_hash(self.enumerator_name(id, sub));
                    enumerators.push(Slot { hash, id, sub });
                }
            }
        }
        self.names = NameIndex::build(&types);
        self.enumerators = NameIndex::build(&enumerators);
    }
}

/// Puts a base type in front of a declarator: ("int", "*") -> "int *", ("char", "[4]") -> "char[4]".
fn join_declarator(base: &str, inner: &str) -> String {
    if inner.is_empty() {
        base.to_string()
    } else if inner.starts_with('[') {
        format!("{base}{inner}")
    } else {
        format!("{base} {inner}")
    }
}

/// Where a bad reference sits, formatted only when validation fails (formatting eagerly for
/// every member would dominate the parse time of vmlinux).
#[derive(Clone, Copy)]
struct Where {
    id: usize,
    kind: Kind,
    what: &'static str,
    index: Option<usize>,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type [{}] ({:?}) {}", self.id, self.kind, self.what)?;
        match self.index {
            Some(i) => write!(f, " {i}"),
            None => Ok(()),
        }
    }
}

type Range = (usize, usize);

/// Validates the header and returns the absolute (start, end) of the type and string sections.
fn parse_header(data: &[u8]) -> Result<(Range, Range), String> {
    if data.is_empty() {
        return Err("is empty".to_string());
    }
    if data.len() < HEADER_LEN {
        return Err(format!(
            "is truncated: {} bytes is shorter than the {HEADER_LEN}-byte BTF header",
            data.len()
        ));
    }
    match le16(data, 0) {
        MAGIC => {}
        MAGIC_SWAPPED => {
            return Err(
                "is big-endian (magic bytes 0xeb 0x9f); only little-endian BTF is supported"
                    .to_string(),
            );
        }
        other => {
            return Err(format!(
                "is not BTF: magic is {other:#06x}, expected {MAGIC:#06x}"
            ));
        }
    }
    let version = data.get(2).copied().unwrap_or(0);
    if version != VERSION {
        return Err(format!(
            "has unsupported BTF version {version} (expected {VERSION})"
        ));
    }
    let hdr_len = le32(data, 4) as usize;
    if hdr_len < HEADER_LEN {
        return Err(format!(
            "is invalid: header length {hdr_len} is less than {HEADER_LEN}"
        ));
    }
    let section = |name: &str, off_at: usize| -> Result<Range, String> {
        let start = hdr_len as u64 + u64::from(le32(data, off_at));
        let end = start + u64::from(le32(data, off_at + 4));
        if end > data.len() as u64 {
            return Err(format!(
                "is truncated: {name} section ends at {end} but file has {} bytes",
                data.len()
            ));
        }
        // Both fit in usize: they are at most data.len().
        Ok((start as usize, end as usize))
    };
    if hdr_len > data.len() {
        return Err(format!(
            "is truncated: header claims {hdr_len} bytes but file has {} bytes",
            data.len()
        ));
    }
    let types = section("type", 8)?;
    let strings = section("string", 16)?;
    Ok((types, strings))
}

/// The string section must start with the empty string and end with a NUL, so that every
/// in-range offset names a terminated string.
fn check_strings(data: &[u8], start: usize, end: usize) -> Result<(), String> {
    let strings = data.get(start..end).unwrap_or(&[]);
    match (strings.first(), strings.last()) {
        (Some(0), Some(0)) => Ok(()),
        (None, _) => Err("is invalid: the string section is empty".to_string()),
        (Some(0), _) => Err("is invalid: the string section does not end with a NUL".to_string()),
        (Some(_), _) => Err("is invalid: the string section does not start with a NUL".to_string()),
    }
}

/// Walks the type section once, recording each type's header and where its records start.
fn scan_types(data: &[u8], start: usize, end: usize) -> Result<Vec<TypeEntry>, String> {
    let placeholder = TypeEntry {
        kind: Kind::Int,
        kind_flag: false,
        vlen: 0,
        name_off: 0,
        size_or_type: 0,
        extra: 0,
    };
    // Most vmlinux types carry few records; 20 bytes per type is a fair capacity guess.
    let mut types = Vec::with_capacity((end - start) / 20 + 1);
    types.push(placeholder);
    let mut pos = start;
    while pos < end {
        let id = types.len();
        if end - pos < TYPE_HEADER_LEN {
            return Err(format!(
                "is truncated: type [{id}] at byte {pos} needs {TYPE_HEADER_LEN} bytes but the \
                 type section ends at {end}"
            ));
        }
        let info = le32(data, pos + 4);
        let raw_kind = (info >> 24) & 0x1f;
        let kind = Kind::from_raw(raw_kind).ok_or_else(|| {
            format!("is invalid: type [{id}] at byte {pos} has unknown kind {raw_kind}")
        })?;
        let vlen = (info & 0xffff) as u16;
        let extra = pos + TYPE_HEADER_LEN;
        let next = extra + kind.trailing_len(usize::from(vlen));
        if next > end {
            return Err(format!(
                "is truncated: type [{id}] ({kind:?}, vlen {vlen}) ends at byte {next} but the \
                 type section ends at {end}"
            ));
        }
        types.push(TypeEntry {
            kind,
            kind_flag: info & 0x8000_0000 != 0,
            vlen,
            name_off: le32(data, pos),
            size_or_type: le32(data, pos + 8),
            extra,
        });
        pos = next;
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Instant};

    use super::*;

    /// Builds little BTF blobs for tests. Methods return the new type id.
    #[derive(Default)]
    struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
        count: u32,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                strings: vec![0],
                types: Vec::new(),
                count: 0,
            }
        }

        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn push_u32(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }

        fn raw(&mut self, name_off: u32, kind: u32, kind_flag: bool, vlen: u32, third: u32) -> u32 {
            self.push_u32(name_off);
            self.push_u32((kind << 24) | (u32::from(kind_flag) << 31) | vlen);
            self.push_u32(third);
            self.count += 1;
            self.count
        }

        fn int(&mut self, name: &str, size: u32, signed: bool) -> u32 {
            let n = self.s(name);
            let id = self.raw(n, 1, false, 0, size);
            self.push_u32((u32::from(signed) << 24) | (size * 8));
            id
        }

        fn int_bits(&mut self, name: &str, size: u32, bits: u32, bit_off: u32) -> u32 {
            let n = self.s(name);
            let id = self.raw(n, 1, false, 0, size);
            self.push_u32((bit_off << 16) | bits);
            id
        }

        fn simple(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            let n = self.s(name);
            self.raw(n, kind, false, 0, target)
        }

        fn ptr(&mut self, target: u32) -> u32 {
            self.simple(2, "", target)
        }

        fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.simple(8, name, target)
        }

        fn konst(&mut self, target: u32) -> u32 {
            self.simple(10, "", target)
        }

        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.raw(0, 3, false, 0, 0);
            self.push_u32(elem);
            self.push_u32(index);
            self.push_u32(n);
            id
        }

        /// Members are (name, type, bit offset, bitfield size); kind_flag is set if any
        /// member has a bitfield size.
        fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let n = self.s(name);
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let id = self.raw(
                n,
                if union { 5 } else { 4 },
                kind_flag,
                members.len() as u32,
                size,
            );
            for &(mname, ty, bit_off, bits) in members {
                let mn = self.s(mname);
                self.push_u32(mn);
                self.push_u32(ty);
                self.push_u32(if kind_flag {
                    (bits << 24) | bit_off
                } else {
                    bit_off
                });
            }
            id
        }

        fn enum32(&mut self, name: &str, signed: bool, values: &[(&str, i32)]) -> u32 {
            let n = self.s(name);
            let id = self.raw(n, 6, signed, values.len() as u32, 4);
            for &(vname, v) in values {
                let vn = self.s(vname);
                self.push_u32(vn);
                self.push_u32(v as u32);
            }
            id
        }

        fn enum64(&mut self, name: &str, signed: bool, values: &[(&str, i64)]) -> u32 {
            let n = self.s(name);
            let id = self.raw(n, 19, signed, values.len() as u32, 8);
            for &(vname, v) in values {
                let vn = self.s(vname);
                self.push_u32(vn);
                self.push_u32(v as u64 as u32);
                self.push_u32((v as u64 >> 32) as u32);
            }
            id
        }

        fn func_proto(&mut self, ret: u32, params: &[(&str, u32)]) -> u32 {
            let id = self.raw(0, 13, false, params.len() as u32, ret);
            for &(pname, ty) in params {
                let pn = self.s(pname);
                self.push_u32(pn);
                self.push_u32(ty);
            }
            id
        }

        fn func(&mut self, name: &str, proto: u32) -> u32 {
            self.simple(12, name, proto)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1);
            out.push(0);
            for v in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A blob exercising nesting, typedefs, bitfields, enums and prototypes.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4, true); // 1
        let uint = b.int("unsigned int", 4, false); // 2
        let long = b.int("long", 8, true); // 3
        let char_ = b.int("char", 1, true); // 4
        let void_ptr = b.ptr(0); // 5
        // struct inner { int a; unsigned int b; }  (size 8)
        let inner = b.composite(false, "inner", 8, &[("a", int, 0, 0), ("b", uint, 32, 0)]);
        let inner_t = b.typedef("inner_t", inner);
        let const_inner_t = b.konst(inner_t);
        // anonymous union { long deep; struct { int x; int y; }; }
        let anon_struct = b.composite(false, "", 8, &[("x", int, 0, 0), ("y", int, 32, 0)]);
        let anon_union = b.composite(
            true,
            "",
            8,
            &[("deep", long, 0, 0), ("", anon_struct, 0, 0)],
        );
        let name_arr = b.array(char_, int, 16);
        let inner_ptr = b.ptr(inner);
        // struct outer {
        //   int first;                   @0
        //   union { long deep; struct { int x; int y; }; };   @8
        //   const inner_t in;            @16
        //   unsigned int flag:3;         @24 (bitfield)
        //   char name[16];               @32
        //   struct inner *ip;            @48
        // } size 56
        let outer = b.composite(
            false,
            "outer",
            56,
            &[
                ("first", int, 0, 0),
                ("", anon_union, 64, 0),
                ("in", const_inner_t, 128, 0),
                ("flag", uint, 192, 3),
                ("name", name_arr, 256, 0),
                ("ip", inner_ptr, 384, 0),
            ],
        );
        let _outer_t = b.typedef("outer_t", outer);
        // Old-style (kind_flag = 0) bitfield: an INT with 5 bits.
        let int5 = b.int_bits("int", 4, 5, 0);
        b.composite(false, "oldbits", 4, &[("five", int5, 0, 0)]);
        b.composite(true, "u", 8, &[("l", long, 0, 0), ("i", int, 0, 0)]);
        let state = b.enum32("state", false, &[("ST_A", 1), ("ST_LISTEN", 10)]);
        b.enum32("", true, &[("ANON_NEG", -5), ("ANON_POS", 7)]);
        b.enum64("big", false, &[("BIG_ONE", 1 << 40), ("BIG_TWO", 2)]);
        b.enum64("", true, &[("BIG_NEG", -(1 << 40))]);
        let const_char = b.konst(char_);
        let const_char_ptr = b.ptr(const_char);
        let outer_ptr = b.ptr(outer);
        let proto = b.func_proto(
            0,
            &[
                ("", void_ptr),
                ("o", outer_ptr),
                ("st", state),
                ("n", uint),
                ("s", const_char_ptr),
            ],
        );
        let proto_ptr = b.ptr(proto);
        b.typedef("btf_trace_demo", proto_ptr);
        let fproto = b.func_proto(int, &[("sk", inner_ptr), ("backlog", int)]);
        b.func("demo_func", fproto);
        // A function pointer parameter and a variadic prototype.
        let cb_proto = b.func_proto(int, &[("", uint)]);
        let cb_ptr = b.ptr(cb_proto);
        let var_proto = b.func_proto(int, &[("fmt", const_char_ptr), ("", cb_ptr), ("", 0)]);
        b.func("demo_printf", var_proto);
        b.build()
    }

    fn parsed() -> Btf {
        Btf::parse(&sample()).unwrap()
    }

    #[test]
    fn struct_sizes() {
        let btf = parsed();
        assert_eq!(btf.struct_size("outer").unwrap(), 56);
        assert_eq!(btf.struct_size("inner").unwrap(), 8);
        assert_eq!(btf.struct_size("u").unwrap(), 8);
        assert_eq!(
            btf.struct_size("outer_t").unwrap(),
            56,
            "typedef of a struct"
        );
        let err = btf.struct_size("nope").unwrap_err().to_string();
        assert!(err.contains("`nope`"), "{err}");
    }

    #[test]
    fn members_direct_and_nested() {
        let btf = parsed();
        assert_eq!(
            btf.member("outer", "first").unwrap(),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "name").unwrap(),
            Member {
                offset: 32,
                size: 16
            }
        );
        assert_eq!(
            btf.member("outer", "ip").unwrap(),
            Member {
                offset: 48,
                size: 8
            }
        );
        // Through an anonymous union, and an anonymous struct inside it.
        assert_eq!(
            btf.member("outer", "deep").unwrap(),
            Member { offset: 8, size: 8 }
        );
        assert_eq!(
            btf.member("outer", "y").unwrap(),
            Member {
                offset: 12,
                size: 4
            }
        );
        // Through `const inner_t` (const -> typedef -> struct).
        assert_eq!(
            btf.member("outer", "in").unwrap(),
            Member {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.member("outer", "in.b").unwrap(),
            Member {
                offset: 20,
                size: 4
            }
        );
        assert_eq!(btf.member("u", "i").unwrap(), Member { offset: 0, size: 4 });
    }

    #[test]
    fn member_errors_name_the_path() {
        let btf = parsed();
        let err = btf.member("outer", "in.zzz").unwrap_err().to_string();
        assert!(
            err.contains("`in.zzz`") && err.contains("struct inner has no member `zzz`"),
            "{err}"
        );
        let err = btf.member("outer", "ip.a").unwrap_err().to_string();
        assert!(
            err.contains("`ip.a`") && err.contains("pointer (struct inner *)"),
            "{err}"
        );
        let err = btf.member("outer", "first.x").unwrap_err().to_string();
        assert!(err.contains("`first` is int, not a struct"), "{err}");
        let err = btf.member("outer", "in..a").unwrap_err().to_string();
        assert!(err.contains("empty step"), "{err}");
        assert!(
            btf.member("missing", "a")
                .unwrap_err()
                .to_string()
                .contains("`missing`")
        );
    }

    #[test]
    fn bitfields_are_rejected() {
        let btf = parsed();
        let err = btf.member("outer", "flag").unwrap_err().to_string();
        assert!(
            err.contains("`flag`") && err.contains("3-bit bitfield"),
            "{err}"
        );
        let err = btf.member("oldbits", "five").unwrap_err().to_string();
        assert!(err.contains("5-bit bitfield"), "{err}");
    }

    #[test]
    fn enums() {
        let btf = parsed();
        assert_eq!(btf.enum_value("ST_LISTEN").unwrap(), 10);
        assert_eq!(
            btf.enum_value("ANON_NEG").unwrap(),
            -5,
            "anonymous signed enum"
        );
        assert_eq!(btf.enum_value("BIG_ONE").unwrap(), 1 << 40, "enum64");
        assert_eq!(
            btf.enum_value("BIG_NEG").unwrap(),
            -(1 << 40),
            "anonymous signed enum64"
        );
        assert_eq!(btf.enum_value_in("state", "ST_A").unwrap(), 1);
        assert_eq!(btf.enum_value_in("big", "BIG_TWO").unwrap(), 2);
        let err = btf
            .enum_value_in("state", "BIG_TWO")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("enum state has no enumerator `BIG_TWO`"),
            "{err}"
        );
        let err = btf
            .enum_value_in("nostate", "ST_A")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no enum named `nostate`"), "{err}");
        assert!(
            btf.enum_value("NOPE")
                .unwrap_err()
                .to_string()
                .contains("`NOPE`")
        );
    }

    #[test]
    fn funcs_and_params() {
        let btf = parsed();
        assert!(btf.has_func("demo_func"));
        assert!(!btf.has_func("btf_trace_demo"), "a typedef is not a FUNC");
        assert!(!btf.has_func("nothing"));
        let params = btf.func_params("btf_trace_demo").unwrap();
        let expected = [
            ("", "void *"),
            ("o", "struct outer *"),
            ("st", "enum state"),
            ("n", "unsigned int"),
            ("s", "const char *"),
        ];
        let got: Vec<(&str, &str)> = params
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(got, expected);
        let params = btf.func_params("demo_func").unwrap();
        assert_eq!(
            params,
            [
                ("sk".into(), "struct inner *".into()),
                ("backlog".into(), "int".into())
            ]
        );
        let params = btf.func_params("demo_printf").unwrap();
        let types: Vec<&str> = params.iter().map(|p| p.1.as_str()).collect();
        assert_eq!(types, ["const char *", "int (*)(unsigned int)", "..."]);
        assert!(
            btf.func_params("outer_t")
                .unwrap_err()
                .to_string()
                .contains("not a function")
        );
        assert!(
            btf.func_params("nope")
                .unwrap_err()
                .to_string()
                .contains("`nope`")
        );
    }

    fn parse_err(bytes: &[u8]) -> String {
        match Btf::parse(bytes) {
            Ok(_) => panic!("parse unexpectedly succeeded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn error_empty_and_short() {
        assert_eq!(parse_err(&[]), "BTF data is empty");
        assert!(parse_err(&[0x9f, 0xeb, 1]).contains("shorter than the 24-byte BTF header"));
    }

    #[test]
    fn error_bad_magic_and_big_endian() {
        let mut blob = sample();
        blob[0] = 0x12;
        assert!(
            parse_err(&blob).contains("magic is 0xeb12"),
            "{}",
            parse_err(&blob)
        );
        blob[0] = 0xeb;
        blob[1] = 0x9f;
        assert!(parse_err(&blob).contains("big-endian"));
    }

    #[test]
    fn error_sections_past_end() {
        let mut blob = sample();
        let len = blob.len();
        blob[12..16].copy_from_slice(&(len as u32).to_le_bytes()); // type_len
        let err = parse_err(&blob);
        assert!(
            err.starts_with("BTF data is truncated: type section ends at"),
            "{err}"
        );
        let mut blob = sample();
        blob[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // str_len
        assert!(parse_err(&blob).contains("string section ends at"));
    }

    #[test]
    fn error_string_offset_out_of_range() {
        let mut b = Builder::new();
        b.raw(1000, 1, false, 0, 4);
        b.push_u32(32);
        let err = parse_err(&b.build());
        assert!(err.contains("name offset 1000, past the end"), "{err}");
    }

    #[test]
    fn error_type_id_out_of_range() {
        let mut b = Builder::new();
        let int = b.int("int", 4, true);
        b.composite(false, "s", 4, &[("a", int, 0, 0), ("b", 77, 0, 0)]);
        let err = parse_err(&b.build());
        assert!(
            err.contains("refers to type id 77, but the last type id is 2"),
            "{err}"
        );
    }

    #[test]
    fn error_typedef_cycle() {
        let mut b = Builder::new();
        b.typedef("loop", 1); // typedef loop loop;
        assert!(parse_err(&b.build()).contains("reference cycle"));
        let mut b = Builder::new();
        b.typedef("a", 2);
        b.konst(3);
        b.ptr(1);
        assert!(parse_err(&b.build()).contains("reference cycle"));
    }

    #[test]
    fn struct_containing_itself_errors() {
        // Not a reference-chain cycle, so parse accepts it; the member search must stop.
        let mut b = Builder::new();
        b.composite(false, "self", 4, &[("", 1, 0, 0), ("", 1, 0, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        let err = btf.member("self", "x").unwrap_err().to_string();
        assert!(err.contains("deeper than"), "{err}");
    }

    #[test]
    fn error_unknown_kind_and_huge_vlen() {
        let mut b = Builder::new();
        b.raw(0, 25, false, 0, 0);
        assert!(parse_err(&b.build()).contains("unknown kind 25"));
        let mut b = Builder::new();
        b.raw(0, 4, false, 0xffff, 8);
        assert!(parse_err(&b.build()).contains("is truncated: type [1] (Struct, vlen 65535)"));
    }

    /// Runs every lookup; used by the fuzz test to make sure none panics or hangs.
    fn exercise(btf: &Btf) {
        for name in ["outer", "inner", "u", "outer_t", "oldbits", ""] {
            let _ = btf.struct_size(name);
            for path in [
                "first", "deep", "y", "in.b", "ip.a", "flag", "name", "five", "", "a.b.c",
            ] {
                let _ = btf.member(name, path);
            }
        }
        for e in ["ST_LISTEN", "ANON_NEG", "BIG_ONE", "BIG_NEG", "x"] {
            let _ = btf.enum_value(e);
            let _ = btf.enum_value_in("state", e);
            let _ = btf.enum_value_in("big", e);
        }
        for f in [
            "demo_func",
            "btf_trace_demo",
            "demo_printf",
            "outer_t",
            "int",
        ] {
            let _ = btf.has_func(f);
            let _ = btf.func_params(f);
        }
        for id in 0..=btf.type_count() as u32 + 1 {
            let _ = btf.type_description(id);
        }
    }

    #[test]
    fn fuzz_truncations_and_flips_never_panic() {
        let blob = sample();
        for len in 0..blob.len() {
            if let Ok(btf) = Btf::parse(&blob[..len]) {
                exercise(&btf);
            }
        }
        let mut parsed_ok = 0;
        for pos in 0..blob.len() {
            for mask in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
                let mut mutated = blob.clone();
                mutated[pos] ^= mask;
                if let Ok(btf) = Btf::parse(&mutated) {
                    parsed_ok += 1;
                    exercise(&btf);
                }
            }
        }
        // Sanity: many flips (in names, offsets, sizes) still yield parseable BTF.
        assert!(parsed_ok > 100, "only {parsed_ok} mutated blobs parsed");
        // Pseudo-random multi-byte corruption (xorshift, deterministic).
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut mutated = blob.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pos = (state as usize) % mutated.len();
                mutated[pos] = (state >> 32) as u8;
            }
            if let Ok(btf) = Btf::parse(&mutated) {
                exercise(&btf);
            }
        }
    }

    #[test]
    fn missing_file_mentions_config() {
        let err = Btf::from_file(Path::new("/nonexistent/lqtrace/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/lqtrace/vmlinux") && err.contains("CONFIG_DEBUG_INFO_BTF"),
            "{err}"
        );
    }

    #[test]
    fn malformed_file_names_the_path() {
        let path = std::env::temp_dir().join(format!("lqtrace-btf-test-{}", std::process::id()));
        std::fs::write(&path, &sample()[..40]).unwrap();
        let err = Btf::from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(
            err.starts_with(&format!("BTF file {} is truncated", path.display())),
            "{err}"
        );
    }

    // ----- the running kernel, cross-checked against bpftool -----

    /// Minimal model of `bpftool btf dump file X` (raw format) output.
    struct BpftoolType {
        kind: String,
        name: String,
        type_id: u32,
        size: u64,
        /// (name, type_id, bits_offset, is_bitfield) for struct/union members.
        members: Vec<(String, u32, u64, bool)>,
        /// (name, value) for enumerators.
        values: Vec<(String, i64)>,
        /// Parameter names of a FUNC_PROTO ("(anon)" for unnamed ones).
        params: Vec<String>,
    }

    fn quoted(s: &str) -> Option<(&str, &str)> {
        let start = s.find('\'')? + 1;
        let len = s[start..].find('\'')?;
        Some((&s[start..start + len], &s[start + len + 1..]))
    }

    fn attr(s: &str, key: &str) -> Option<String> {
        s.split_whitespace()
            .find_map(|w| w.strip_prefix(key).map(str::to_string))
    }

    fn bpftool_raw(path: &Path) -> Option<HashMap<u32, BpftoolType>> {
        let out = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file"])
            .arg(path)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut types = HashMap::new();
        let mut current = 0u32;
        for line in text.lines() {
            let parsed = parse_bpftool_line(line, &mut current, &mut types);
            assert!(parsed.is_some(), "cannot parse bpftool line: {line}");
        }
        Some(types)
    }

    /// One line of bpftool's raw dump: a `[id] KIND 'name' attrs` header or a tab-indented
    /// member/enumerator/parameter/variable line belonging to the last header.
    fn parse_bpftool_line(
        line: &str,
        current: &mut u32,
        types: &mut HashMap<u32, BpftoolType>,
    ) -> Option<()> {
        if let Some(rest) = line.strip_prefix('[') {
            let (id, rest) = rest.split_once("] ")?;
            *current = id.parse().ok()?;
            let (kind, rest) = rest.split_once(' ')?;
            let (name, attrs) = quoted(rest)?;
            let type_id = attr(attrs, "type_id=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let size = attr(attrs, "size=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let t = BpftoolType {
                kind: kind.to_string(),
                name: name.to_string(),
                type_id,
                size,
                members: Vec::new(),
                values: Vec::new(),
                params: Vec::new(),
            };
            types.insert(*current, t);
        } else if let Some(rest) = line.strip_prefix('\t') {
            // DATASEC variables ("type_id=1 offset=0 size=4 (VAR 'x')") are not needed.
            let Some((name, attrs)) = quoted(rest).filter(|_| rest.starts_with('\'')) else {
                return Some(());
            };
            let t = types.get_mut(current)?;
            if let Some(v) = attr(attrs, "val=") {
                // ENUM64 values are printed with an (U)LL suffix, and unsigned above i64::MAX.
                let v = v.trim_end_matches(['U', 'L']);
                let v = v
                    .parse::<i64>()
                    .or_else(|_| v.parse::<u64>().map(|x| x as i64));
                t.values.push((name.to_string(), v.ok()?));
            } else if let Some(off) = attr(attrs, "bits_offset=") {
                let ty = attr(attrs, "type_id=")?.parse().ok()?;
                let bitfield = attr(attrs, "bitfield_size=").is_some();
                t.members
                    .push((name.to_string(), ty, off.parse().ok()?, bitfield));
            } else if t.kind == "FUNC_PROTO" {
                t.params.push(name.to_string());
            }
        }
        Some(())
    }

    fn bpftool_c(path: &Path) -> Option<String> {
        let out = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file"])
            .arg(path)
            .args(["format", "c"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Independent member walk over bpftool's view: bit offset of `path` in struct `name`.
    fn bpftool_member_bits(
        types: &HashMap<u32, BpftoolType>,
        name: &str,
        path: &str,
    ) -> Option<u64> {
        fn strip(types: &HashMap<u32, BpftoolType>, mut id: u32) -> u32 {
            while let Some(t) = types.get(&id) {
                if !["TYPEDEF", "CONST", "VOLATILE", "TYPE_TAG", "RESTRICT"]
                    .contains(&t.kind.as_str())
                {
                    break;
                }
                id = t.type_id;
            }
            id
        }
        fn find(types: &HashMap<u32, BpftoolType>, id: u32, step: &str) -> Option<(u64, u32)> {
            for (mname, ty, off, _) in &types.get(&id)?.members {
                if mname == step {
                    return Some((*off, *ty));
                }
                if mname == "(anon)"
                    && let Some((inner, ty)) = find(types, strip(types, *ty), step)
                {
                    return Some((off + inner, ty));
                }
            }
            None
        }
        let mut id = *types
            .iter()
            .find(|(_, t)| t.name == name && (t.kind == "STRUCT" || t.kind == "UNION"))?
            .0;
        let mut bits = 0;
        for step in path.split('.') {
            let (off, ty) = find(types, id, step)?;
            bits += off;
            id = strip(types, ty);
        }
        Some(bits)
    }

    #[test]
    fn running_kernel_vmlinux() {
        let path = Path::new(VMLINUX_PATH);
        if std::fs::metadata(path).is_err() {
            println!("note: {VMLINUX_PATH} is missing; skipping the running-kernel BTF test");
            return;
        }
        let started = Instant::now();
        let btf = match Btf::from_file(path) {
            Ok(btf) => btf,
            Err(BtfError::Io { .. }) => {
                println!("note: {VMLINUX_PATH} is not readable; skipping");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        println!(
            "parsed {VMLINUX_PATH} ({} types) in {:?}",
            btf.type_count(),
            started.elapsed()
        );

        let paths = [
            ("sock", "__sk_common.skc_net"),
            ("inet_connection_sock", "icsk_accept_queue.qlen"),
            ("socket_alloc", "vfs_inode"),
            ("bpf_array", "pptrs"),
            ("net", "mib.net_statistics"),
            ("sock", "sk_ack_backlog"),
            ("sock", "sk_max_ack_backlog"),
        ];
        let mut found = HashMap::new();
        for (ty, p) in paths {
            let m = btf.member(ty, p).unwrap_or_else(|e| panic!("{e}"));
            println!("{ty}.{p} = {m:?}");
            assert!(m.offset <= btf.struct_size(ty).unwrap());
            found.insert((ty, p), m);
        }
        assert_eq!(found[&("net", "mib.net_statistics")].size, 8, "a pointer");
        // `void __percpu *pptrs[]` is a flexible array at the very end of struct bpf_array.
        let pptrs = found[&("bpf_array", "pptrs")];
        assert_eq!(
            (pptrs.offset, pptrs.size),
            (btf.struct_size("bpf_array").unwrap(), 0)
        );
        let drops = btf.enum_value("LINUX_MIB_LISTENDROPS").unwrap();
        assert!(drops > 0);
        assert!(btf.has_func("tcp_conn_request"));
        let params = btf.func_params("btf_trace_kfree_skb").unwrap();
        println!("btf_trace_kfree_skb params: {params:?}");
        assert!(params.iter().any(|p| p.1 == "struct sk_buff *"));
        assert_eq!(params.first().map(|p| p.1.as_str()), Some("void *"));

        let Some(raw) = bpftool_raw(path) else {
            println!("note: bpftool is not available; sanity checks only");
            return;
        };
        assert_eq!(
            raw.len(),
            btf.type_count(),
            "type count differs from bpftool"
        );
        for ((ty, p), m) in &found {
            let bits =
                bpftool_member_bits(&raw, ty, p).unwrap_or_else(|| panic!("bpftool: no {ty}.{p}"));
            assert_eq!(
                u64::from(m.offset) * 8,
                bits,
                "{ty}.{p} offset differs from bpftool"
            );
        }
        let bpftool_drops = raw
            .values()
            .flat_map(|t| t.values.iter())
            .find(|(n, _)| n == "LINUX_MIB_LISTENDROPS")
            .map(|v| v.1);
        assert_eq!(Some(drops), bpftool_drops);

        // Every raw tracepoint typedef: our parameter types must match bpftool's C output.
        let c = bpftool_c(path).expect("bpftool format c");
        let mut checked = 0;
        for line in c.lines() {
            let Some(rest) = line.strip_prefix("typedef void (*btf_trace_") else {
                continue;
            };
            let Some((event, params)) = rest.split_once(")(") else {
                continue;
            };
            let Some(params) = params.strip_suffix(");") else {
                continue;
            };
            let ours: Vec<String> = btf
                .func_params(&format!("btf_trace_{event}"))
                .unwrap()
                .into_iter()
                .map(|p| p.1)
                .collect();
            assert_eq!(ours.join(", "), params, "btf_trace_{event}");
            checked += 1;
        }
        println!("{checked} btf_trace_* typedefs match bpftool");
        assert!(checked > 100);
        let started = Instant::now();
        compare_with_bpftool(&btf, &raw);
        println!("whole-vmlinux comparison took {:?}", started.elapsed());
    }

    /// Broad cross-check of the whole vmlinux against bpftool's raw dump: every FUNC's
    /// parameter names, every uniquely named struct's size and direct members, and every
    /// uniquely named enumerator.
    fn compare_with_bpftool(btf: &Btf, raw: &HashMap<u32, BpftoolType>) {
        let mut name_count: HashMap<(&str, &str), usize> = HashMap::new();
        for t in raw.values() {
            *name_count
                .entry((t.kind.as_str(), t.name.as_str()))
                .or_default() += 1;
        }
        let unique = |kind: &str, name: &str| name_count.get(&(kind, name)) == Some(&1);
        let mut enumerator_count: HashMap<&str, usize> = HashMap::new();
        for (vname, _) in raw.values().flat_map(|t| t.values.iter()) {
            *enumerator_count.entry(vname.as_str()).or_default() += 1;
        }
        let (mut funcs, mut members, mut enumerators) = (0, 0, 0);
        for t in raw.values() {
            match t.kind.as_str() {
                "FUNC" => {
                    let expected: Vec<&str> = raw[&t.type_id]
                        .params
                        .iter()
                        .map(|p| if p == "(anon)" { "" } else { p.as_str() })
                        .collect();
                    let ours = btf.func_params(&t.name).unwrap();
                    let ours: Vec<&str> = ours.iter().map(|p| p.0.as_str()).collect();
                    if unique("FUNC", &t.name) {
                        assert_eq!(ours, expected, "parameters of {}", t.name);
                        funcs += 1;
                    }
                }
                "STRUCT"
                    if t.name != "(anon)"
                        && unique("STRUCT", &t.name)
                        && !unique("UNION", &t.name) =>
                {
                    assert_eq!(
                        u64::from(btf.struct_size(&t.name).unwrap()),
                        t.size,
                        "sizeof {}",
                        t.name
                    );
                    for (mname, _, bits, bitfield) in &t.members {
                        if mname == "(anon)" {
                            continue;
                        }
                        match btf.member(&t.name, mname) {
                            Ok(m) => {
                                assert!(!bitfield, "{}.{mname} is a bitfield", t.name);
                                assert_eq!(u64::from(m.offset) * 8, *bits, "{}.{mname}", t.name);
                            }
                            Err(e) => assert!(*bitfield || bits % 8 != 0, "{e}"),
                        }
                        members += 1;
                    }
                }
                "ENUM" | "ENUM64" => {
                    for (vname, value) in &t.values {
                        if enumerator_count.get(vname.as_str()) == Some(&1) {
                            assert_eq!(btf.enum_value(vname).unwrap(), *value, "{vname}");
                            enumerators += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        println!(
            "bpftool agrees on {funcs} functions, {members} members, {enumerators} enumerators"
        );
        assert!(funcs > 1000 && members > 10_000 && enumerators > 10_000);
    }
}

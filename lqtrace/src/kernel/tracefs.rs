//! tracefs: where it is mounted, and the `events/<category>/<event>/format` files.
//!
//! Tracepoint record layouts change between kernels (fields get added, widened or reordered),
//! so lqtrace reads field offsets from the format files instead of hard-coding them.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Where tracefs is usually found: its own mount point, and the legacy path under debugfs.
pub const DEFAULT_ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where we mount tracefs ourselves when nothing is mounted (the kernel creates this directory).
const MOUNT_POINT: &str = "/sys/kernel/tracing";

/// Finds the tracefs root (a directory containing `events/`). If none is mounted, mounts
/// tracefs at /sys/kernel/tracing, as a fresh machine or a minimal container may not have it.
pub fn root() -> Result<PathBuf> {
    if let Some(found) = first_with_events(DEFAULT_ROOTS.iter().map(Path::new)) {
        return Ok(found);
    }
    let why = match mount_tracefs(MOUNT_POINT) {
        Ok(()) if Path::new(MOUNT_POINT).join("events").is_dir() => {
            log::info!("mounted tracefs at {MOUNT_POINT}");
            return Ok(PathBuf::from(MOUNT_POINT));
        }
        Ok(()) => "the mounted tracefs has no events/ directory".to_string(),
        Err(e) => e.to_string(),
    };
    Err(anyhow!(
        "tracefs is not mounted and mounting it at {MOUNT_POINT} failed ({why}): run \
         `mount -t tracefs nodev {MOUNT_POINT}` as root"
    ))
}

/// The first candidate directory that has an `events/` subdirectory.
fn first_with_events<'a>(candidates: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    candidates
        .into_iter()
        .find(|dir| dir.join("events").is_dir())
        .map(Path::to_path_buf)
}

fn mount_tracefs(target: &str) -> std::io::Result<()> {
    let to_c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let (source, target, fstype) = (to_c("nodev")?, to_c(target)?, to_c("tracefs")?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; tracefs
    // takes no mount data, so a null data pointer is allowed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One field of a tracepoint record, as described by a `field:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C type without the field name and array suffix, e.g. "__u8" for `__u8 saddr[4]`,
    /// "const void *", "enum skb_drop_reason", "__data_loc char[]".
    pub type_name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
    /// `Some(n)` for `name[n]`, `Some(0)` for a flexible array `name[]`, None otherwise
    /// (also None if the length is not a number, in which case `type_name` keeps `[LEN]`).
    pub array_len: Option<u32>,
}

/// A parsed `format` file.
#[derive(Debug, Clone)]
pub struct Format {
    /// Event name (`name:` line), e.g. "inet_sock_set_state".
    pub name: String,
    /// Category (directory under events/); set by [`read_format`], empty from [`parse_format`].
    pub category: String,
    pub id: u32,
    pub fields: Vec<Field>,
    /// Everything after `print fmt: `.
    pub print_fmt: String,
}

impl Format {
    /// "category:event", or just "event" when the category is unknown.
    pub fn tracepoint(&self) -> String {
        if self.category.is_empty() {
            self.name.clone()
        } else {
            format!("{}:{}", self.category, self.name)
        }
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Result<&Field> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| anyhow!("tracepoint {} has no field `{name}`", self.tracepoint()))
    }

    /// The value that `__print_symbolic(REC->field, { value, "symbol" }, ...)` in the print
    /// format maps to `symbol`: the kernel's own table, so e.g. drop reasons need no guessing.
    pub fn symbol_value(&self, field: &str, symbol: &str) -> Option<i64> {
        symbolic_tables(&self.print_fmt)
            .filter(|(arg, _)| is_field_ref(arg, field))
            .find_map(|(_, entries)| {
                entries
                    .iter()
                    .find(|(_, name)| name == symbol)
                    .and_then(|(value, _)| *value)
            })
    }
}

/// Parses the text of a format file. Unknown lines are ignored (newer kernels may add some),
/// but `name:`, `ID:` and at least one field are required and every `field:` line must parse.
pub fn parse_format(text: &str) -> Result<Format> {
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    let mut print_fmt = String::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("name:") {
            name = Some(rest.trim().to_string());
        } else if let Some(rest) = trimmed.strip_prefix("ID:") {
            let value = rest.trim();
            id = Some(
                value
                    .parse::<u32>()
                    .map_err(|_| anyhow!("line {line_no}: bad ID `{value}`"))?,
            );
        } else if trimmed.starts_with("field:") {
            fields.push(parse_field(trimmed).with_context(|| format!("line {line_no}"))?);
        } else if let Some(rest) = trimmed.strip_prefix("print fmt:") {
            print_fmt = rest.trim().to_string();
        }
    }
    let name = name.filter(|n| !n.is_empty()).context("no `name:` line")?;
    let id = id.context("no `ID:` line")?;
    if fields.is_empty() {
        bail!("no `field:` lines");
    }
    Ok(Format {
        name,
        category: String::new(),
        id,
        fields,
        print_fmt,
    })
}

/// Reads and parses `<root>/events/<category>/<event>/format`.
pub fn read_format(root: &Path, category: &str, event: &str) -> Result<Format> {
    let is_plain = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !is_plain(category) || !is_plain(event) {
        bail!("invalid tracepoint name {category}:{event}");
    }
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "kernel has no tracepoint {category}:{event} ({} does not exist)",
                path.display()
            )
        }
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let mut format = parse_format(&text)
        .with_context(|| format!("malformed tracepoint format {}", path.display()))?;
    format.category = category.to_string();
    Ok(format)
}

/// Parses `field:TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;`.
fn parse_field(line: &str) -> Result<Field> {
    let mut parts = line.split(';').map(str::trim).filter(|p| !p.is_empty());
    let decl = parts
        .next()
        .and_then(|p| p.strip_prefix("field:"))
        .context("a field line must start with `field:`")?
        .trim();
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in parts {
        let (key, value) = part
            .split_once(':')
            .with_context(|| format!("bad attribute `{part}`"))?;
        let number = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| anyhow!("field `{decl}`: bad {key} `{value}`"))
        };
        match key.trim() {
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = number()? != 0,
            _ => {} // unknown attributes are tolerated for forward compatibility
        }
    }
    let (type_name, name, array_len) = split_declaration(decl)?;
    Ok(Field {
        name,
        type_name,
        offset: offset.with_context(|| format!("field `{decl}` has no offset"))?,
        size: size.with_context(|| format!("field `{decl}` has no size"))?,
        signed,
        array_len,
    })
}

/// Splits "unsigned char saddr[4]" into ("unsigned char", "saddr", Some(4)) and
/// "const char *name" into ("const char *", "name", None).
fn split_declaration(decl: &str) -> Result<(String, String, Option<u32>)> {
    let no_type = || anyhow!("field `{decl}` has no type");
    // The name is everything after the last blank or '*'.
    let (cut, ch) = decl
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace() || c == '*')
        .ok_or_else(no_type)?;
    let type_part = decl.get(..cut + ch.len_utf8()).ok_or_else(no_type)?;
    let last = decl.get(cut + ch.len_utf8()..).ok_or_else(no_type)?;
    let mut type_name = normalize_pointer(type_part);
    let (name, array_len) = match last.split_once('[') {
        None => (last, None),
        Some((name, rest)) => {
            let len = rest
                .strip_suffix(']')
                .with_context(|| format!("field `{decl}`: unclosed `[`"))?;
            match len.trim() {
                "" => (name, Some(0)),
                len => match len.parse::<u32>() {
                    Ok(n) => (name, Some(n)),
                    // An unexpanded macro length: keep it visible in the type.
                    Err(_) => {
                        type_name = format!("{type_name} [{len}]");
                        (name, None)
                    }
                },
            }
        }
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        bail!("field `{decl}` is not `TYPE NAME`");
    }
    if type_name.is_empty() || type_name.starts_with('*') {
        return Err(no_type());
    }
    Ok((type_name, name.to_string(), array_len))
}

/// Writes pointer types the way the kernel prints them: "void*" / "void *" -> "void *".
fn normalize_pointer(type_part: &str) -> String {
    let trimmed = type_part.trim();
    let base = trimmed.trim_end_matches(|c: char| c == '*' || c.is_whitespace());
    let stars =
        trimmed.chars().filter(|&c| c == '*').count() - base.chars().filter(|&c| c == '*').count();
    if stars == 0 {
        trimmed.to_string()
    } else {
        format!("{base} {}", "*".repeat(stars))
    }
}

/// True if `arg` (the first `__print_symbolic` argument) is `REC->field`, possibly in parens.
fn is_field_ref(arg: &str, field: &str) -> bool {
    let mut arg = arg.trim();
    while let Some(inner) = arg.strip_prefix('(').and_then(|a| a.strip_suffix(')')) {
        arg = inner.trim();
    }
    arg.strip_prefix("REC->").is_some_and(|f| f.trim() == field)
}

/// A symbolic table: its first argument and its `(value, "symbol")` entries. The value is None
/// when it is not a plain number (e.g. an unexpanded macro).
type SymbolTable = (String, Vec<(Option<i64>, String)>);

/// Every `__print_symbolic(...)` / `__print_symbolic_u64(...)` call in a print format.
fn symbolic_tables(print_fmt: &str) -> impl Iterator<Item = SymbolTable> + '_ {
    let mut rest = print_fmt;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find("__print_symbolic")?;
            let after = rest.get(start + "__print_symbolic".len()..)?;
            let after = after.strip_prefix("_u64").unwrap_or(after);
            let Some(args) = after.trim_start().strip_prefix('(') else {
                rest = after;
                continue;
            };
            let (inside, tail) = split_balanced(args)?;
            rest = tail;
            let mut items = split_top_level(inside).into_iter();
            let arg = items.next()?.to_string();
            let entries = items.filter_map(parse_symbol_entry).collect();
            return Some((arg, entries));
        }
    })
}

/// Given text just after an opening '(', returns (contents, text after the matching ')'),
/// skipping brackets inside string and character literals.
fn split_balanced(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' if depth == 0 => return Some((text.get(..i)?, text.get(i + 1..)?)),
            ')' | '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Splits on commas that are not nested in brackets or string literals.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(text.get(start..i).unwrap_or("").trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text.get(start..).unwrap_or("").trim());
    parts
}

/// Parses `{ 40, "TCP_LISTEN_OVERFLOW" }`.
fn parse_symbol_entry(entry: &str) -> Option<(Option<i64>, String)> {
    let inner = entry.trim().strip_prefix('{')?.strip_suffix('}')?;
    let (value, symbol) = inner.split_once(',')?;
    let symbol = symbol.trim().strip_prefix('"')?.strip_suffix('"')?;
    Some((parse_c_integer(value), symbol.to_string()))
}

/// Parses a C integer literal as printed in format files: "40", "-1", "(-1)", "0x20", "1ULL".
fn parse_c_integer(text: &str) -> Option<i64> {
    let mut t = text.trim();
    while let Some(inner) = t.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        t = inner.trim();
    }
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim()),
        None => (false, t),
    };
    let t = t.trim_end_matches(['u', 'U', 'l', 'L']);
    let magnitude = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        t.parse::<u64>().ok()?
    };
    // Wrapping keeps 64-bit masks like 0xffffffffffffffff representable (as -1).
    let value = magnitude as i64;
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_ENTER_LISTEN: &str = "name: sys_enter_listen
ID: 2236
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int backlog;\toffset:24;\tsize:8;\tsigned:0;

print fmt: \"fd: 0x%08lx, backlog: 0x%08lx\", ((unsigned long)(REC->fd)), ((unsigned long)(REC->backlog))
";

    const SYS_EXIT_LISTEN: &str = "name: sys_exit_listen
ID: 2235
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: \"0x%lx\", REC->ret
";

    const INET_SOCK_SET_STATE: &str = r#"name: inet_sock_set_state
ID: 2287
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: "family=%s protocol=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c oldstate=%s newstate=%s", __print_symbolic(REC->family, { 2, "AF_INET" }, { 10, "AF_INET6" }), __print_symbolic(REC->protocol, { 6, "IPPROTO_TCP" }, { 132, "IPPROTO_SCTP" }, { 262, "IPPROTO_MPTCP" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->oldstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, { 3, "TCP_SYN_RECV" }, { 4, "TCP_FIN_WAIT1" }, { 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 8, "TCP_CLOSE_WAIT" }, { 9, "TCP_LAST_ACK" }, { 10, "TCP_LISTEN" }, { 11, "TCP_CLOSING" }, { 12, "TCP_NEW_SYN_RECV" }), __print_symbolic(REC->newstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, { 3, "TCP_SYN_RECV" }, { 4, "TCP_FIN_WAIT1" }, { 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 8, "TCP_CLOSE_WAIT" }, { 9, "TCP_LAST_ACK" }, { 10, "TCP_LISTEN" }, { 11, "TCP_CLOSING" }, { 12, "TCP_NEW_SYN_RECV" })
"#;

    const KFREE_SKB: &str = r#"name: kfree_skb
ID: 2310
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:void * rx_sk;	offset:24;	size:8;	signed:0;
	field:unsigned short protocol;	offset:32;	size:2;	signed:0;
	field:enum skb_drop_reason reason;	offset:36;	size:4;	signed:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 4, "SOCKET_CLOSE" }, { 5, "SOCKET_FILTER" }, { 6, "SOCKET_RCVBUFF" }, { 7, "UNIX_DISCONNECT" }, { 8, "UNIX_SKIP_OOB" }, { 9, "PKT_TOO_SMALL" }, { 10, "TCP_CSUM" }, { 11, "UDP_CSUM" }, { 12, "NETFILTER_DROP" }, { 13, "OTHERHOST" }, { 14, "IP_CSUM" }, { 15, "IP_INHDR" }, { 16, "IP_RPFILTER" }, { 17, "UNICAST_IN_L2_MULTICAST" }, { 18, "XFRM_POLICY" }, { 19, "IP_NOPROTO" }, { 20, "PROTO_MEM" }, { 21, "TCP_AUTH_HDR" }, { 22, "TCP_MD5NOTFOUND" }, { 23, "TCP_MD5UNEXPECTED" }, { 24, "TCP_MD5FAILURE" }, { 25, "TCP_AONOTFOUND" }, { 26, "TCP_AOUNEXPECTED" }, { 27, "TCP_AOKEYNOTFOUND" }, { 28, "TCP_AOFAILURE" }, { 29, "SOCKET_BACKLOG" }, { 30, "TCP_FLAGS" }, { 31, "TCP_ABORT_ON_DATA" }, { 32, "TCP_ZEROWINDOW" }, { 33, "TCP_OLD_DATA" }, { 34, "TCP_OVERWINDOW" }, { 35, "TCP_OFOMERGE" }, { 36, "TCP_RFC7323_PAWS" }, { 37, "TCP_RFC7323_PAWS_ACK" }, { 38, "TCP_RFC7323_TW_PAWS" }, { 39, "TCP_RFC7323_TSECR" }, { 40, "TCP_LISTEN_OVERFLOW" }, { 41, "TCP_OLD_SEQUENCE" }, { 42, "TCP_INVALID_SEQUENCE" }, { 43, "TCP_INVALID_END_SEQUENCE" }, { 44, "TCP_INVALID_ACK_SEQUENCE" }, { 45, "TCP_RESET" }, { 46, "TCP_INVALID_SYN" }, { 47, "TCP_CLOSE" }, { 48, "TCP_FASTOPEN" }, { 49, "TCP_OLD_ACK" }, { 50, "TCP_TOO_OLD_ACK" }, { 51, "TCP_ACK_UNSENT_DATA" }, { 52, "TCP_OFO_QUEUE_PRUNE" }, { 53, "TCP_OFO_DROP" }, { 54, "IP_OUTNOROUTES" }, { 55, "BPF_CGROUP_EGRESS" }, { 56, "IPV6DISABLED" }, { 57, "NEIGH_CREATEFAIL" }, { 58, "NEIGH_FAILED" }, { 59, "NEIGH_QUEUEFULL" }, { 60, "NEIGH_DEAD" }, { 61, "NEIGH_HH_FILLFAIL" }, { 62, "TC_EGRESS" }, { 63, "SECURITY_HOOK" }, { 64, "QDISC_DROP" }, { 65, "QDISC_OVERLIMIT" }, { 66, "QDISC_CONGESTED" }, { 67, "CAKE_FLOOD" }, { 68, "FQ_BAND_LIMIT" }, { 69, "FQ_HORIZON_LIMIT" }, { 70, "FQ_FLOW_LIMIT" }, { 71, "CPU_BACKLOG" }, { 72, "XDP" }, { 73, "TC_INGRESS" }, { 74, "UNHANDLED_PROTO" }, { 75, "SKB_CSUM" }, { 76, "SKB_GSO_SEG" }, { 77, "SKB_UCOPY_FAULT" }, { 78, "DEV_HDR" }, { 79, "DEV_READY" }, { 80, "FULL_RING" }, { 81, "NOMEM" }, { 82, "HDR_TRUNC" }, { 83, "TAP_FILTER" }, { 84, "TAP_TXFILTER" }, { 85, "ICMP_CSUM" }, { 86, "INVALID_PROTO" }, { 87, "IP_INADDRERRORS" }, { 88, "IP_INNOROUTES" }, { 89, "IP_LOCAL_SOURCE" }, { 90, "IP_INVALID_SOURCE" }, { 91, "IP_LOCALNET" }, { 92, "IP_INVALID_DEST" }, { 93, "PKT_TOO_BIG" }, { 94, "DUP_FRAG" }, { 95, "FRAG_REASM_TIMEOUT" }, { 96, "FRAG_TOO_FAR" }, { 97, "TCP_MINTTL" }, { 98, "IPV6_BAD_EXTHDR" }, { 99, "IPV6_NDISC_FRAG" }, { 100, "IPV6_NDISC_HOP_LIMIT" }, { 101, "IPV6_NDISC_BAD_CODE" }, { 102, "IPV6_NDISC_BAD_OPTIONS" }, { 103, "IPV6_NDISC_NS_OTHERHOST" }, { 104, "QUEUE_PURGE" }, { 105, "TC_COOKIE_ERROR" }, { 106, "PACKET_SOCK_ERROR" }, { 107, "TC_CHAIN_NOTFOUND" }, { 108, "TC_RECLASSIFY_LOOP" }, { 109, "VXLAN_INVALID_HDR" }, { 110, "VXLAN_VNI_NOT_FOUND" }, { 111, "MAC_INVALID_SOURCE" }, { 112, "VXLAN_ENTRY_EXISTS" }, { 113, "NO_TX_TARGET" }, { 114, "IP_TUNNEL_ECN" }, { 115, "TUNNEL_TXINFO" }, { 116, "LOCAL_MAC" }, { 117, "ARP_PVLAN_DISABLE" }, { 118, "MAC_IEEE_MAC_CONTROL" }, { 119, "BRIDGE_INGRESS_STP_STATE" }, { 120, "CAN_RX_INVALID_FRAME" }, { 121, "CANFD_RX_INVALID_FRAME" }, { 122, "CANXL_RX_INVALID_FRAME" }, { 123, "PFMEMALLOC" }, { 124, "DUALPI2_STEP_DROP" }, { 125, "PSP_INPUT" }, { 126, "PSP_OUTPUT" }, { 127, "RECURSION_LIMIT" }, { 128, "MAX" })
"#;

    const CONSUME_SKB: &str = r#"name: consume_skb
ID: 2309
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;

print fmt: "skbaddr=%p location=%pS", REC->skbaddr, REC->location
"#;

    /// avc:selinux_audited has `__data_loc` fields.
    const SELINUX_AUDITED: &str = r#"name: selinux_audited
ID: 2080
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:u32 requested;	offset:8;	size:4;	signed:0;
	field:u32 denied;	offset:12;	size:4;	signed:0;
	field:u32 audited;	offset:16;	size:4;	signed:0;
	field:int result;	offset:20;	size:4;	signed:1;
	field:__data_loc char[] scontext;	offset:24;	size:4;	signed:0;
	field:__data_loc char[] tcontext;	offset:28;	size:4;	signed:0;
	field:__data_loc char[] tclass;	offset:32;	size:4;	signed:0;

print fmt: "requested=0x%x denied=0x%x audited=0x%x result=%d scontext=%s tcontext=%s tclass=%s", REC->requested, REC->denied, REC->audited, REC->result, __get_str(scontext), __get_str(tcontext), __get_str(tclass)
"#;

    /// ftrace:function ends with a flexible array.
    const FTRACE_FUNCTION: &str = r#"name: function
ID: 1
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:unsigned long ip;	offset:8;	size:8;	signed:0;
	field:unsigned long parent_ip;	offset:16;	size:8;	signed:0;
	field:unsigned long args[];	offset:24;	size:0;	signed:0;

print fmt: " %ps <-- %ps", (void *)REC->ip, (void *)REC->parent_ip
"#;

    fn field(name: &str, type_name: &str, offset: u32, size: u32, signed: bool) -> Field {
        Field {
            name: name.into(),
            type_name: type_name.into(),
            offset,
            size,
            signed,
            array_len: None,
        }
    }

    #[test]
    fn sys_enter_listen() {
        let f = parse_format(SYS_ENTER_LISTEN).unwrap();
        assert_eq!((f.name.as_str(), f.id), ("sys_enter_listen", 2236));
        assert_eq!(f.fields.len(), 7);
        assert_eq!(
            f.fields[0],
            field("common_type", "unsigned short", 0, 2, false)
        );
        assert_eq!(f.fields[3], field("common_pid", "int", 4, 4, true));
        assert_eq!(*f.field("fd").unwrap(), field("fd", "int", 16, 8, false));
        assert_eq!(
            *f.field("backlog").unwrap(),
            field("backlog", "int", 24, 8, false)
        );
        assert!(f.print_fmt.starts_with("\"fd: 0x%08lx"));
        assert!(f.print_fmt.ends_with("((unsigned long)(REC->backlog))"));
    }

    #[test]
    fn sys_exit_listen() {
        let f = parse_format(SYS_EXIT_LISTEN).unwrap();
        assert_eq!(*f.field("ret").unwrap(), field("ret", "long", 16, 8, true));
        assert_eq!(f.print_fmt, "\"0x%lx\", REC->ret");
    }

    #[test]
    fn inet_sock_set_state_fields_and_symbols() {
        let f = parse_format(INET_SOCK_SET_STATE).unwrap();
        assert_eq!(
            *f.field("skaddr").unwrap(),
            field("skaddr", "const void *", 8, 8, false)
        );
        assert_eq!(
            *f.field("newstate").unwrap(),
            field("newstate", "int", 20, 4, true)
        );
        assert_eq!(
            *f.field("family").unwrap(),
            field("family", "__u16", 28, 2, false)
        );
        let saddr = f.field("saddr").unwrap();
        assert_eq!(
            (
                saddr.type_name.as_str(),
                saddr.array_len,
                saddr.offset,
                saddr.size
            ),
            ("__u8", Some(4), 32, 4)
        );
        assert_eq!(f.field("daddr_v6").unwrap().array_len, Some(16));
        assert_eq!(f.symbol_value("newstate", "TCP_LISTEN"), Some(10));
        assert_eq!(f.symbol_value("oldstate", "TCP_NEW_SYN_RECV"), Some(12));
        assert_eq!(f.symbol_value("family", "AF_INET6"), Some(10));
        assert_eq!(f.symbol_value("protocol", "IPPROTO_MPTCP"), Some(262));
        assert_eq!(
            f.symbol_value("newstate", "AF_INET"),
            None,
            "symbol of another field"
        );
        assert_eq!(
            f.symbol_value("sport", "TCP_LISTEN"),
            None,
            "field without a table"
        );
    }

    #[test]
    fn kfree_skb_reason() {
        let f = parse_format(KFREE_SKB).unwrap();
        let reason = f.field("reason").unwrap();
        assert_eq!(
            *reason,
            field("reason", "enum skb_drop_reason", 36, 4, false)
        );
        assert_eq!(
            *f.field("rx_sk").unwrap(),
            field("rx_sk", "void *", 24, 8, false)
        );
        assert_eq!(f.symbol_value("reason", "TCP_LISTEN_OVERFLOW"), Some(40));
        assert_eq!(f.symbol_value("reason", "NOT_SPECIFIED"), Some(2));
        assert_eq!(f.symbol_value("reason", "MAX"), Some(128));
        assert_eq!(
            f.symbol_value("reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW"),
            None
        );
    }

    #[test]
    fn consume_skb_and_missing_field_error() {
        let mut f = parse_format(CONSUME_SKB).unwrap();
        assert_eq!(f.fields.len(), 6);
        assert_eq!(f.field("location").unwrap().offset, 16);
        assert_eq!(
            f.field("x").unwrap_err().to_string(),
            "tracepoint consume_skb has no field `x`"
        );
        f.category = "skb".into();
        assert_eq!(
            f.field("x").unwrap_err().to_string(),
            "tracepoint skb:consume_skb has no field `x`"
        );
    }

    #[test]
    fn data_loc_and_flexible_arrays() {
        let f = parse_format(SELINUX_AUDITED).unwrap();
        let s = f.field("scontext").unwrap();
        assert_eq!(*s, field("scontext", "__data_loc char[]", 24, 4, false));
        let f = parse_format(FTRACE_FUNCTION).unwrap();
        let args = f.field("args").unwrap();
        assert_eq!(
            (args.type_name.as_str(), args.array_len, args.size),
            ("unsigned long", Some(0), 0)
        );
    }

    #[test]
    fn declarations() {
        let split = |d: &str| split_declaration(d).unwrap();
        assert_eq!(
            split("char comm[16]"),
            ("char".into(), "comm".into(), Some(16))
        );
        assert_eq!(
            split("const char *name"),
            ("const char *".into(), "name".into(), None)
        );
        assert_eq!(split("void **pp"), ("void **".into(), "pp".into(), None));
        assert_eq!(
            split("char comm[TASK_COMM_LEN]"),
            ("char [TASK_COMM_LEN]".into(), "comm".into(), None)
        );
        assert!(split_declaration("lonely").is_err());
        assert!(split_declaration("int a[4").is_err());
        assert!(split_declaration("int a-b").is_err());
    }

    #[test]
    fn malformed_inputs() {
        let err = |text: &str| format!("{:#}", parse_format(text).unwrap_err());
        assert!(err("").contains("no `name:` line"));
        assert!(err("name: x\n").contains("no `ID:` line"));
        assert!(err("name: x\nID: 12\n").contains("no `field:` lines"));
        assert!(err("name: x\nID: twelve\n").contains("bad ID `twelve`"));
        let bad = "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n";
        assert!(
            err(bad).contains("line 4") && err(bad).contains("bad offset"),
            "{}",
            err(bad)
        );
        let no_size = "name: x\nID: 1\n\tfield:int a;\toffset:0;\tsigned:1;\n";
        assert!(err(no_size).contains("has no size"));
        let no_type = "name: x\nID: 1\n\tfield:a;\toffset:0;\tsize:4;\n";
        assert!(err(no_type).contains("has no type"));
        let bad_attr = "name: x\nID: 1\n\tfield:int a;\toffset 0;\tsize:4;\n";
        assert!(err(bad_attr).contains("bad attribute"));
        // A missing `signed:` is accepted (old kernels did not print it).
        let f = parse_format("name: x\nID: 1\n\tfield:int a;\toffset:0;\tsize:4;\n").unwrap();
        assert!(!f.fields[0].signed);
    }

    #[test]
    fn garbage_never_panics() {
        let samples = [
            SYS_ENTER_LISTEN,
            INET_SOCK_SET_STATE,
            KFREE_SKB,
            SELINUX_AUDITED,
        ];
        for text in samples {
            for end in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
                if let Ok(f) = parse_format(&text[..end]) {
                    let _ = f.symbol_value("reason", "TCP_LISTEN_OVERFLOW");
                    let _ = f.symbol_value("newstate", "TCP_LISTEN");
                }
            }
        }
        for junk in [
            "field:",
            "field:;;;",
            "\tfield:int [;offset:1;size:1;",
            "print fmt: __print_symbolic(",
            "ID: 99999999999",
        ] {
            let _ = parse_format(junk);
        }
    }

    #[test]
    fn symbolic_edge_cases() {
        let mut f = parse_format(CONSUME_SKB).unwrap();
        f.print_fmt = r#""%s %s", __print_symbolic((REC->x), { (-1), "NEG" }, { 0x20, "HEX" }, { 1ULL, "ULL" }, { SOME_MACRO, "MACRO" }, { 3, "with, \"comma\" (paren" }), __print_symbolic_u64(REC->y, { 0xffffffffffffffff, "ALL" })"#.into();
        assert_eq!(f.symbol_value("x", "NEG"), Some(-1));
        assert_eq!(f.symbol_value("x", "HEX"), Some(32));
        assert_eq!(f.symbol_value("x", "ULL"), Some(1));
        assert_eq!(f.symbol_value("x", "MACRO"), None);
        assert_eq!(f.symbol_value("y", "ALL"), Some(-1));
        assert_eq!(f.symbol_value("x", "NOPE"), None);
        // The tricky string literal did not break the table.
        assert_eq!(symbolic_tables(&f.print_fmt).count(), 2);
        f.print_fmt = "__print_symbolic(REC->x, { 1, \"A\" }".into(); // unbalanced
        assert_eq!(f.symbol_value("x", "A"), None);
    }

    #[test]
    fn read_format_errors_and_roots() {
        let dir = std::env::temp_dir().join(format!("lqtrace-tracefs-test-{}", std::process::id()));
        let event_dir = dir.join("events/skb/kfree_skb");
        std::fs::create_dir_all(&event_dir).unwrap();
        std::fs::write(event_dir.join("format"), KFREE_SKB).unwrap();
        let f = read_format(&dir, "skb", "kfree_skb").unwrap();
        assert_eq!(f.tracepoint(), "skb:kfree_skb");
        let err = read_format(&dir, "skb", "nope").unwrap_err().to_string();
        assert!(
            err.starts_with("kernel has no tracepoint skb:nope"),
            "{err}"
        );
        assert!(read_format(&dir, "..", "x").is_err());
        std::fs::write(event_dir.join("format"), "garbage").unwrap();
        let err = format!("{:#}", read_format(&dir, "skb", "kfree_skb").unwrap_err());
        assert!(
            err.contains("events/skb/kfree_skb/format") && err.contains("no `name:`"),
            "{err}"
        );
        let missing = dir.join("missing");
        assert_eq!(
            first_with_events([missing.as_path(), dir.as_path()]),
            Some(dir.clone())
        );
        assert_eq!(first_with_events([missing.as_path()]), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// On a machine with tracefs, the real files parse and agree with the copies above.
    #[test]
    fn running_kernel_formats() {
        let Some(root) = first_with_events(DEFAULT_ROOTS.iter().map(Path::new)) else {
            println!("note: tracefs is not mounted; skipping");
            return;
        };
        // With tracefs present, root() must find it without trying to mount anything.
        assert_eq!(super::root().unwrap(), root);
        for (category, event) in [
            ("syscalls", "sys_enter_listen"),
            ("syscalls", "sys_exit_listen"),
            ("sock", "inet_sock_set_state"),
            ("skb", "kfree_skb"),
            ("skb", "consume_skb"),
        ] {
            match read_format(&root, category, event) {
                Ok(f) => {
                    assert_eq!(f.name, event);
                    assert!(f.field("common_pid").is_ok());
                }
                Err(e) => println!("note: {e:#}"),
            }
        }
        if let Ok(f) = read_format(&root, "sock", "inet_sock_set_state") {
            assert_eq!(f.symbol_value("newstate", "TCP_LISTEN"), Some(10));
        }
        if let Ok(f) = read_format(&root, "skb", "kfree_skb") {
            println!(
                "TCP_LISTEN_OVERFLOW = {:?}",
                f.symbol_value("reason", "TCP_LISTEN_OVERFLOW")
            );
        }
    }
}

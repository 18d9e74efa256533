//! The BPF objects a tracer holds (from its fdinfo) and the ones bpftool lists, to tell this
//! tracer's programs and links from other tracers' and to see them released.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BpfObjects {
    pub progs: BTreeSet<u64>,
    pub links: BTreeSet<u64>,
    pub maps: BTreeSet<u64>,
}

/// The programs, links and maps process `pid` holds fds of (none if it is gone).
pub fn bpf_objects_of(pid: i32) -> BpfObjects {
    let mut o = BpfObjects::default();
    for info in lqtrace_testkit::procfs::fdinfos(pid).unwrap_or_default() {
        // A link's fdinfo names its program too: look at link_id first.
        if let Some(&link) = info.get("link_id") {
            o.links.insert(link);
        } else if let Some(&prog) = info.get("prog_id") {
            o.progs.insert(prog);
        } else if let Some(&map) = info.get("map_id") {
            o.maps.insert(map);
        }
    }
    o
}

pub fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .args(args)
        .arg("-j")
        .output()
        .expect("run bpftool (apt-get install -y bpftool)");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]))
}

/// (all prog ids, all link ids) as bpftool shows them: the tracer's own are told apart by the
/// ids it holds (`bpf_objects_of`), not by names, which change with the hook table.
pub fn bpftool_objects() -> (BTreeSet<u64>, BTreeSet<u64>) {
    let progs = bpftool_json(&["prog", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let links = bpftool_json(&["link", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    (progs, links)
}

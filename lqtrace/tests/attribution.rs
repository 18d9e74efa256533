//! Naming the right socket and the right process: SO_REUSEPORT groups (attribute to the socket,
//! not the port) and pre-fork servers (the process holding the socket at drop time, not the one
//! that called listen()). The servers are python3 processes inside the test's namespace.

mod support;

use std::net::SocketAddr;

use support::*;

/// The two scenarios run one after the other: run concurrently, the python helper of one was
/// seen not to print its first line within 10 s now and then (under `ip netns exec` churn).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const REUSEPORT_SERVER: &str = r#"
import os, socket, sys, time
port, backlog, do_accept = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", port))
s.listen(backlog)
print("READY", os.getpid(), os.fstat(s.fileno()).st_ino, flush=True)
deadline = time.time() + 60
if do_accept:
    s.settimeout(0.2)
    while time.time() < deadline:
        try:
            c, _ = s.accept()
            c.close()
        except socket.timeout:
            pass
else:
    time.sleep(60)
"#;

/// Two SO_REUSEPORT listeners on one port in two processes: A (backlog 1) never accepts,
/// B (backlog 128) accepts everything. Every drop is A's.
#[test]
fn reuseport_pair_attributes_to_the_socket() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let label = "reuseport";
    let ns = new_ns("lqt-reuse");
    let port = 5081u16;
    let tracer = Tracer::start(&[]);
    let mut a = python(
        &ns,
        "reuseport A",
        REUSEPORT_SERVER,
        &[&port.to_string(), "1", "0"],
    );
    let wa = a.expect_line("READY ");
    let mut b = python(
        &ns,
        "reuseport B",
        REUSEPORT_SERVER,
        &[&port.to_string(), "128", "1"],
    );
    let wb = b.expect_line("READY ");
    let (a_pid, a_ino): (i64, u64) = (wa[0].parse().unwrap(), wa[1].parse().unwrap());
    let (b_pid, b_ino): (i64, u64) = (wb[0].parse().unwrap(), wb[1].parse().unwrap());
    eprintln!("[{label}] A pid {a_pid} sock_ino {a_ino}; B pid {b_pid} sock_ino {b_ino}");

    let target: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let d = connect_in(&ns, move || sequential_connects(target, 40, 20));
    let out = tracer.stop();
    drop((a, b));

    reconcile(label, &ns, &out, &d, false);
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("sock_ino == A's {a_ino} (B is {b_ino})"),
        |r| r["sock_ino"].as_u64() == Some(a_ino),
    );
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("owners == [A's pid {a_pid}] (B is {b_pid})"),
        |r| owner_pids(r) == vec![a_pid],
    );
    assert_all_drops(
        &out,
        ns.inum(),
        "requested_backlog == 1, accept_queue_max == 1",
        |r| r["requested_backlog"] == 1 && r["accept_queue_max"] == 1,
    );
    let sum = summary(&out.records);
    for l in summary_listeners(sum, ns.inum()) {
        assert!(
            l["sock_ino"].as_u64() != Some(b_ino) || l["drops"].as_u64() == Some(0),
            "[{label}] summary blames B's socket: {l}"
        );
    }
}

/// Pre-fork: the parent listen()s, forks, closes its copy; the child holds the socket and never
/// accepts. The tracer started before listen(), so it knows the requested backlog.
#[test]
fn prefork_owner_is_the_child() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let label = "prefork";
    let ns = new_ns("lqt-fork");
    let port = 5082u16;
    let tracer = Tracer::start(&[]);
    let args = [&port.to_string(), "2", "0", "60"];
    let mut p = python(&ns, "prefork", FORKED_LISTENER, &args);
    let child = p.expect_line("CHILD ");
    let child_pid: i64 = child[0].parse().unwrap();
    let ino: u64 = child[1].parse().unwrap();
    p.extra_pids.push(child_pid as i32);
    let parent_pid: i64 = p.expect_line("PARENT ")[0].parse().unwrap();
    eprintln!(
        "[{label}] parent pid {parent_pid} (closed its fd), child pid {child_pid} holds sock_ino {ino}"
    );

    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let d = connect_in(&ns, move || sequential_connects(target, 12, 30));
    let out = tracer.stop();
    drop(p);

    reconcile(label, &ns, &out, &d, false);
    assert_all_at(&out, ns.inum(), ino);
    assert_all_drops(
        &out,
        ns.inum(),
        &format!(
            "owners == [child {child_pid}] (not the parent {parent_pid}, not this test {})",
            std::process::id()
        ),
        |r| owner_pids(r) == vec![child_pid],
    );
    assert_all_drops(&out, ns.inum(), "requested_backlog == 2", |r| {
        r["requested_backlog"] == 2
    });
    assert_all_drops(&out, ns.inum(), "owner comm python3", |r| {
        r["owners"][0]["comm"]
            .as_str()
            .is_some_and(|c| c.starts_with("python3"))
    });
}

//! Naming the right socket and the right process: SO_REUSEPORT groups (attribute to the socket,
//! not the port) and pre-fork servers (the process holding the socket at drop time, not the one
//! that called listen()). The servers are processes forked from the test, inside its namespace.

mod support;

use std::net::SocketAddr;

use support::*;

/// Two SO_REUSEPORT listeners on one port in two processes: A (backlog 1) never accepts,
/// B (backlog 128) accepts everything. Every drop is A's.
#[test]
fn reuseport_pair_attributes_to_the_socket() {
    require_root!();
    let label = "reuseport";
    let ns = new_ns("lqt-reuse");
    let port = 5081u16;
    let tracer = Tracer::start(&[]);
    let a = holder(&ns, port, 1, Role::ReusePort { accept: false }, 60);
    let b = holder(&ns, port, 128, Role::ReusePort { accept: true }, 60);
    let (a_pid, a_ino) = (i64::from(a.pid), a.sock_ino);
    let (b_pid, b_ino) = (i64::from(b.pid), b.sock_ino);
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
    let label = "prefork";
    let ns = new_ns("lqt-fork");
    let port = 5082u16;
    let tracer = Tracer::start(&[]);
    let p = holder(&ns, port, 2, Role::PreFork { keep: false }, 60);
    let (parent_pid, child_pid) = (i64::from(p.pid), i64::from(p.child.unwrap()));
    let ino = p.sock_ino;
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
    assert_all_drops(&out, ns.inum(), &format!("owner comm {HOLDER_COMM}"), |r| {
        r["owners"][0]["comm"] == HOLDER_COMM
    });
}

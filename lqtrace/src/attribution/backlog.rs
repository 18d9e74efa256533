//! The backlog each listening socket's application asked for in `listen()`. The effective limit is
//! `min(backlog, somaxconn)`, so the requested value tells which knob to turn; the kernel does not
//! keep it, so lqtrace learns it from the listen() calls it sees (`lqtrace-ebpf/src/lifecycle.rs`).

use std::collections::HashMap;

use super::owners::socket_inode_of_fd;

#[derive(Debug, Default)]
pub struct Backlogs {
    by_ino: HashMap<u64, i32>,
}

impl Backlogs {
    /// A socket started listening with this backlog.
    pub fn listened(&mut self, ino: u64, backlog: i32) {
        if ino != 0 {
            self.by_ino.insert(ino, backlog);
        }
    }

    /// `listen(fd, backlog)` again on a listening socket (no state change, so the record names
    /// the fd): resolve it through /proc. Returns the socket's inode when found.
    pub fn relistened(&mut self, pid: u32, fd: i32, backlog: i32) -> Option<u64> {
        let ino = socket_inode_of_fd(pid, fd)?;
        self.by_ino.insert(ino, backlog);
        Some(ino)
    }

    /// The socket stopped listening: forget it (inodes are reused).
    pub fn closed(&mut self, ino: u64) {
        self.by_ino.remove(&ino);
    }

    pub fn requested(&self, ino: u64) -> Option<i32> {
        self.by_ino.get(&ino).copied()
    }

    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd};

    use super::*;

    #[test]
    fn listen_relisten_close() {
        let mut b = Backlogs::default();
        b.listened(7, 50);
        assert_eq!(b.requested(7), Some(50));
        b.listened(0, 9);
        assert_eq!(b.len(), 1, "inode 0 (no file) is not a key");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = b
            .relistened(std::process::id(), l.as_raw_fd(), 3)
            .expect("own fd resolves");
        assert_eq!(b.requested(ino), Some(3));
        b.closed(7);
        assert_eq!(b.requested(7), None);
        assert_eq!(b.relistened(std::process::id(), -1, 3), None);
    }
}

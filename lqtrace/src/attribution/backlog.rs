//! What lqtrace learned about listeners from listen() calls: the backlog the application asked
//! for (the effective limit is min(backlog, somaxconn), so the requested value tells which knob
//! to turn) and who called listen().

use std::collections::HashMap;

use lqtrace_common::{KIND_LISTEN, KIND_RELISTEN, ListenRecord};

use crate::attribution::owners::{OwnerIndex, socket_inode_of_fd};

#[derive(Debug, Clone, Default)]
pub struct ListenInfo {
    pub requested_backlog: Option<i32>,
    pub listen_pid: u32,
}

#[derive(Debug, Default)]
pub struct Listeners {
    by_ino: HashMap<u64, ListenInfo>,
}

impl Listeners {
    pub fn on_record(&mut self, r: &ListenRecord, owners: &mut OwnerIndex) {
        match r.kind {
            KIND_LISTEN if r.sock_ino != 0 => {
                let info = self.by_ino.entry(r.sock_ino).or_default();
                info.listen_pid = r.pid;
                if r.has_backlog != 0 {
                    info.requested_backlog = Some(r.backlog);
                }
                // Cheap: teach the owner index about the new socket now (its creator may
                // still hold it).
                owners.note_listener(r.sock_ino, r.pid);
            }
            KIND_RELISTEN => {
                if let Some(ino) = socket_inode_of_fd(r.pid, r.fd) {
                    let info = self.by_ino.entry(ino).or_default();
                    info.listen_pid = r.pid;
                    info.requested_backlog = Some(r.backlog);
                }
            }
            _ => {}
        }
    }

    pub fn requested_backlog(&self, ino: u64) -> Option<i32> {
        self.by_ino.get(&ino).and_then(|i| i.requested_backlog)
    }
}

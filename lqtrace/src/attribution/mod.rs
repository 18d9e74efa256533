//! Who a listening socket belongs to: the processes holding it (`/proc`), their containers
//! (cgroup paths), and the backlog they asked for in listen().

pub mod backlog;
pub mod container;
pub mod owners;
pub mod procfs;

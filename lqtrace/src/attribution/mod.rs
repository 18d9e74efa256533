//! Who a listening socket belongs to: the processes holding it (`/proc`), their containers
//! (cgroup paths), and the backlog they asked for in listen(); the enricher that attaches all of
//! it to each record, off the thread that reads the ring.

pub mod accepts;
pub mod backlog;
pub mod container;
pub mod enricher;
pub mod outcomes;
pub mod owners;
pub mod ports;
pub mod procfs;

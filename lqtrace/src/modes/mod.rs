//! The command-line modes. Each is a thin composition of a `session::Session` and sinks.

pub mod check;
pub mod demo;
pub mod listeners;
mod live;
pub mod run;
mod stop;
pub mod top;
pub mod trace;

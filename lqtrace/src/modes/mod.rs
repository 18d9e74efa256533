//! Modes other than the default live trace. Each is a consumer of `session::Session`.

pub mod check;
pub mod demo;
pub mod listeners;
pub mod run;
pub mod top;

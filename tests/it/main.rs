//! Integration tests: real sockets on loopback, real peers. One crate, shared helpers.

mod baresip;
mod common;
mod kamailio;
mod loopback;
mod mix;
mod nat;
mod policy;
mod prompts;
mod roster;
mod routing;
mod sipp;
mod transport;

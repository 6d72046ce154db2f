//! Integration tests: real sockets on loopback, real peers. One crate, shared helpers.

mod baresip;
mod common;
mod kamailio;
mod loopback;
mod mix;
mod nat;
mod policy;
mod prompts;
mod routing;
mod sipp;
mod transport;

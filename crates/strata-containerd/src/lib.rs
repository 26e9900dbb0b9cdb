//! Strata as a containerd proxy snapshotter.
//!
//! containerd lets an external process provide a snapshotter over its
//! snapshots gRPC API (`proxy_plugins` in its config). [`Service`] is that
//! API over a Strata snapshot store (any backend), through the bindings
//! `strata-api` carries (generated with prost and tonic, checked in);
//! no tonic or prost type appears in this crate's API. [`serve`] runs it on a unix
//! socket until a signal; [`GrpcSnapshotter`] is a Strata snapshotter that
//! is a client of any such server.
//!
//! Errors carry the gRPC codes containerd turns back into its `errdefs`
//! (NotFound, AlreadyExists, FailedPrecondition, InvalidArgument). Labels
//! and Update's field paths are the store's own; List filters are
//! containerd's filter language. What containerd creates is held by one
//! flat lease ([`SERVED_LEASE`]) so Strata's collector never takes it;
//! containerd's Remove decides, and Cleanup sweeps what removals left.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod convert;
mod serve;
mod service;

pub use client::GrpcSnapshotter;
pub use serve::{ServeError, ServeOptions, bind, serve, serve_on, signalled};
pub use service::{SERVED_LEASE, Service};

// The README's examples compile and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! Strata's wire bindings: the gRPC services and messages Strata serves
//! and calls, generated from the `.proto` files in this crate's `proto/`
//! directory by `cargo xtask protos` (prost and tonic, through protox: no
//! `protoc` is needed, at build time or to regenerate) and checked in
//! under `src/generated/`. CI regenerates them and fails when the checked-in
//! code differs.
//!
//! * [`containerd::services::snapshots::v1`]: containerd's snapshots
//!   service, which a proxy snapshotter serves (`strata serve`) and
//!   containerd calls; a client of it too.
//! * [`containerd::types`]: the mount type those messages carry.
//! * [`strata::daemon::v1`]: Strata's own daemon API, which `strata serve`
//!   offers its own clients on the same sockets (the `strata` command line
//!   runs its commands through it when a daemon owns the root).
//!
//! These are the raw wire types; `strata-containerd` converts them to and
//! from Strata's own, so nothing above it names a tonic or prost type.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// containerd's packages (`containerd.*`). Everything below is generated
/// code, which documents what the `.proto` files document.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all,
    reason = "generated code"
)]
pub mod containerd {
    /// `containerd.types`: the mount description.
    pub mod types {
        include!("generated/containerd.types.rs");
    }

    /// `containerd.services.*`.
    pub mod services {
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`: the snapshots service.
            pub mod v1 {
                include!("generated/containerd.services.snapshots.v1.rs");
            }
        }
    }
}

/// Strata's own packages (`strata.*`). Everything below is generated code,
/// which documents what the `.proto` files document.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all,
    reason = "generated code"
)]
pub mod strata {
    /// `strata.daemon`.
    pub mod daemon {
        /// `strata.daemon.v1`: running commands against a daemon's root.
        pub mod v1 {
            include!("generated/strata.daemon.v1.rs");
        }
    }
}

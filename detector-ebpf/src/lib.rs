//! Nothing to see here: the programs are the `detector` binary target of this crate. This
//! library target exists so that the daemon can take a build-dependency on the crate, which
//! makes cargo rebuild the daemon when the programs change.
#![no_std]

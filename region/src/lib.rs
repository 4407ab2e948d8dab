//! Flotilla's regions: the raft core (pure, no I/O) and, later, the region actor and the
//! node that hosts many regions.
#![deny(missing_docs)]

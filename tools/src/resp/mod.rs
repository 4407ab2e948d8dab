//! The Redis-protocol (RESP2) server on the client address.
//!
//! # Commands
//!
//! | command | answer |
//! |---|---|
//! | `PING [msg]`, `ECHO msg` | `PONG` / the message |
//! | `GET key` | the value or nil |
//! | `SET key value [NX\|XX]` | `OK`, or nil when `NX`/`XX` did not hold. `EX`, `PX`, `EXAT`, `PXAT`, `KEEPTTL` and `GET` are refused: keys do not expire |
//! | `DEL key…`, `EXISTS key…` | how many (`EXISTS` counts a repeated key each time) |
//! | `MGET key…` | the values, nil for missing ones |
//! | `MSET key value…` | `OK`; atomic within a region, not across regions |
//! | `INCR`, `DECR`, `INCRBY`, `DECRBY` | the new value; atomic in the state machine |
//! | `SCAN cursor [MATCH glob] [COUNT n] [TYPE string]` | `[next cursor, keys]`, in key order (below) |
//! | `RANGE start end [LIMIT n]` | `[k1, v1, k2, v2, …]` with `start <= key < end`, in key order; an empty `end` means no end; `LIMIT` 1..=10000, default 100 |
//! | `FLOTILLA.NODE` | the node's id |
//! | `FLOTILLA.REGIONS` | the node's routing table: `[id, start, end, epoch version, epoch conf_ver, leader or nil]` per region, in key order |
//! | `FLOTILLA.REGIONS ALL` | the same for every region of the cluster the node knows of (from gossip), held here or not |
//! | `FLOTILLA.SESSION client_id seq <write…>` | the wrapped write's answer; the write runs with the client's session, so the same pair sent again (to any node) applies once |
//! | `FLOTILLA.ROUTE region_id version conf_ver <command…>` | the wrapped command's answer if its keys are in region `region_id` at that epoch on this node; else `-TRYAGAIN EPOCHNOTMATCH …` with the regions as they are now (below). Wraps `GET`, `EXISTS`, `MGET`, `RANGE` (the region where it starts), `SET`, `DEL`, `MSET`, `INCR`/`INCRBY`/`DECR`/`DECRBY`, and `FLOTILLA.SESSION`, in this order only: `FLOTILLA.ROUTE 7 3 1 FLOTILLA.SESSION id seq SET k v`. Counted and pipelined as the wrapped command |
//! | `COMMAND [COUNT\|LIST\|INFO…\|DOCS]`, `CONFIG GET …` (always empty), `SELECT 0`, `CLIENT SETNAME/GETNAME/SETINFO`, `QUIT` | what Redis clients and tools ask on connect |
//!
//! `SCAN` walks keys in order rather than by hash bucket. The cursor is a number, as every
//! Redis client expects; the server maps it to the key where the next page starts (see
//! `cursor.rs`), so cursors are valid on any connection to the same server for the last few
//! thousand pages. `COUNT` is how many keys are read for the page (at most 10000); with
//! `MATCH`, fewer may come back, and a literal prefix of the pattern (`user:*`) narrows the
//! walk to that prefix. As in Redis, a page may be empty while the cursor is not `0`.
//!
//! # Errors and limits
//!
//! A command that is unknown, has the wrong number of arguments or a bad option gets
//! `-ERR …` and the connection goes on. A request the parser cannot follow (garbage, a bad
//! length, a bulk above [`BULK_BYTES_MAX`], a request above [`REQUEST_BYTES_MAX`], more than
//! [`REQUEST_ARGS_MAX`] arguments) gets `-ERR Protocol error: …` and the connection is
//! closed, since its place in the stream is lost. Failures the client may retry as they are
//! (no leader, timeout) come as `-TRYAGAIN …`.
//!
//! A `FLOTILLA.ROUTE` whose route is stale (a split, merge or membership change the
//! client has not seen) is answered, on one line,
//! `-TRYAGAIN EPOCHNOTMATCH region <id>: epoch changed; now <desc> …` with
//! `desc = <id> <start> <end> <version> <conf_ver> <leader>`, keys in lowercase hex and `-`
//! for an empty key or an unknown leader (format and parser:
//! [`flotilla_common::epoch_not_match`]). Nothing was applied; the client replaces its
//! cached regions with these and sends the request again at once.

mod command;
mod connection;
mod cursor;
mod execute;
mod glob;
pub mod metric;
mod parser;
pub(crate) mod reply;
mod server;

pub use command::{RANGE_LIMIT_DEFAULT, RANGE_LIMIT_MAX, SCAN_COUNT_DEFAULT, SCAN_COUNT_MAX};
pub use cursor::{CURSORS_MAX, CURSOR_BYTES_MAX};
pub use parser::{BULK_BYTES_MAX, INLINE_BYTES_MAX, REQUEST_ARGS_MAX, REQUEST_BYTES_MAX};
pub use server::{RespLimits, RespServer, CONNECTIONS_MAX, PIPELINE_DEPTH_MAX};

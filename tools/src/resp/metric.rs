//! The RESP server's metrics. Labels come only from the command table (unknown commands
//! are counted as `unknown`), so a client cannot grow the number of series.

use std::time::Instant;

/// Counter: commands received, by `command`.
pub const COMMANDS_TOTAL: &str = "flotilla_resp_commands_total";
/// Counter: commands answered with an error, by `command`.
pub const COMMAND_ERRORS_TOTAL: &str = "flotilla_resp_command_errors_total";
/// Histogram: seconds from parsing a command to having its answer, by `command`.
pub const COMMAND_DURATION_SECONDS: &str = "flotilla_resp_command_duration_seconds";
/// Counter: connections closed because they broke the protocol.
pub const PROTOCOL_ERRORS_TOTAL: &str = "flotilla_resp_protocol_errors_total";
/// Gauge: open client connections.
pub const CONNECTIONS_ACTIVE: &str = "flotilla_resp_connections_active";
/// Counter: connections refused because `connections_max` were open.
pub const CONNECTIONS_REJECTED_TOTAL: &str = "flotilla_resp_connections_rejected_total";

pub(crate) fn command_started(command: &'static str) {
    metrics::counter!(COMMANDS_TOTAL, "command" => command).increment(1);
}

pub(crate) fn command_done(command: &'static str, started: Instant, failed: bool) {
    metrics::histogram!(COMMAND_DURATION_SECONDS, "command" => command)
        .record(started.elapsed().as_secs_f64());
    if failed {
        metrics::counter!(COMMAND_ERRORS_TOTAL, "command" => command).increment(1);
    }
}

pub(crate) fn protocol_error() {
    metrics::counter!(PROTOCOL_ERRORS_TOTAL).increment(1);
}

pub(crate) fn connection_opened() {
    metrics::gauge!(CONNECTIONS_ACTIVE).increment(1.0);
}

pub(crate) fn connection_closed() {
    metrics::gauge!(CONNECTIONS_ACTIVE).decrement(1.0);
}

pub(crate) fn connection_rejected() {
    metrics::counter!(CONNECTIONS_REJECTED_TOTAL).increment(1);
}

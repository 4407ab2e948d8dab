//! The commands the RESP server knows: a table (name, arity, key positions, how they touch
//! the data) and the parsing of a request's arguments into a typed [`Command`].
//!
//! Parsing is pure: a request either becomes a command or an `-ERR` reply, and nothing here
//! talks to the service.

use bytes::Bytes;

use super::parser::Request;
use super::reply::Reply;
use crate::service::{EpochStatus, ExpectedRoute, PutCondition};

/// Default `COUNT` of `SCAN`, as in Redis.
pub const SCAN_COUNT_DEFAULT: usize = 10;

/// Largest `COUNT` of `SCAN`: one page is read from the service and answered in one reply,
/// so this bounds both. `COUNT` is a hint in Redis, so larger values are lowered to this.
pub const SCAN_COUNT_MAX: usize = 10_000;

/// Default `LIMIT` of `RANGE`.
pub const RANGE_LIMIT_DEFAULT: usize = 100;

/// Largest `LIMIT` of `RANGE`, for the same reason as [`SCAN_COUNT_MAX`]; read on from the
/// last key for more.
pub const RANGE_LIMIT_MAX: usize = 10_000;

/// How a command touches the data, which decides what may overlap in a pipeline: reads may
/// overlap reads, writes may overlap writes (the service keeps their order), local commands
/// overlap anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Answered by the connection itself (PING, CONFIG, …).
    Local,
    /// Reads from the service.
    Read,
    /// Writes through the service.
    Write,
}

/// One entry of the command table; `COMMAND` answers from it.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case name; also the `command` label of the metrics.
    pub name: &'static str,
    /// Number of arguments including the name; negative means "at least -arity" (Redis' rule).
    pub arity: i64,
    /// Redis command flags, for `COMMAND`.
    pub flags: &'static [&'static str],
    /// Position of the first key argument (0: none).
    pub first_key: i64,
    /// Position of the last key argument (-1: the last argument).
    pub last_key: i64,
    /// Step between key arguments.
    pub step: i64,
    /// How it touches the data.
    pub access: Access,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    access: Access,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        access,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);
const READ_FAST: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];

/// Every command the server answers.
pub const COMMANDS: &[CommandSpec] = &[
    spec("ping", -1, &["fast", "stale"], NO_KEYS, Access::Local),
    spec("echo", 2, &["fast"], NO_KEYS, Access::Local),
    spec("get", 2, READ_FAST, ONE_KEY, Access::Read),
    spec("set", -3, WRITE, ONE_KEY, Access::Write),
    spec("del", -2, &["write"], ALL_KEYS, Access::Write),
    spec("exists", -2, READ_FAST, ALL_KEYS, Access::Read),
    spec("mget", -2, READ_FAST, ALL_KEYS, Access::Read),
    spec("mset", -3, WRITE, (1, -1, 2), Access::Write),
    spec("incr", 2, WRITE_FAST, ONE_KEY, Access::Write),
    spec("incrby", 3, WRITE_FAST, ONE_KEY, Access::Write),
    spec("decr", 2, WRITE_FAST, ONE_KEY, Access::Write),
    spec("decrby", 3, WRITE_FAST, ONE_KEY, Access::Write),
    spec("scan", -2, &["readonly"], NO_KEYS, Access::Read),
    spec("range", -3, &["readonly"], (1, 2, 1), Access::Read),
    spec("command", -1, &["loading", "stale"], NO_KEYS, Access::Local),
    spec(
        "config",
        -2,
        &["admin", "loading", "stale"],
        NO_KEYS,
        Access::Local,
    ),
    spec(
        "select",
        2,
        &["loading", "stale", "fast"],
        NO_KEYS,
        Access::Local,
    ),
    spec("client", -2, &["loading", "stale"], NO_KEYS, Access::Local),
    spec("quit", -1, &["fast"], NO_KEYS, Access::Local),
    // Flotilla's own commands, for region-aware clients (the Rust client library).
    spec(
        "flotilla.node",
        1,
        &["fast", "stale"],
        NO_KEYS,
        Access::Local,
    ),
    spec("flotilla.regions", -1, &["stale"], NO_KEYS, Access::Local),
    // The wrapped write's keys move with it, hence no fixed key positions.
    spec(
        "flotilla.session",
        -5,
        &["write", "denyoom", "movablekeys"],
        NO_KEYS,
        Access::Write,
    ),
    // Its access and metrics name are the wrapped command's (see `parse_route`); this
    // entry only serves the name lookup, the arity check and `COMMAND`.
    spec(
        "flotilla.route",
        -5,
        &["movablekeys"],
        NO_KEYS,
        Access::Local,
    ),
];

/// A parsed command, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `GET key`.
    Get(Bytes),
    /// `SET key value [NX|XX]`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// `NX` → `IfAbsent`, `XX` → `IfPresent`.
        cond: PutCondition,
    },
    /// `DEL key [key …]`.
    Del(Vec<Bytes>),
    /// `EXISTS key [key …]`.
    Exists(Vec<Bytes>),
    /// `MGET key [key …]`.
    MGet(Vec<Bytes>),
    /// `MSET key value [key value …]`.
    MSet(Vec<(Bytes, Bytes)>),
    /// `INCR`, `INCRBY`, `DECR`, `DECRBY`, all as one signed delta.
    IncrBy {
        /// The key.
        key: Bytes,
        /// What to add.
        delta: i64,
    },
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`.
    Scan {
        /// 0 to start; otherwise a cursor an earlier `SCAN` returned.
        cursor: u64,
        /// Only keys matching this glob are returned.
        pattern: Option<Bytes>,
        /// How many keys to look at.
        count: usize,
        /// False when `TYPE` named a type other than `string` (every key is a string).
        any_type: bool,
    },
    /// `RANGE start end [LIMIT n]`.
    Range {
        /// First key (inclusive).
        start: Bytes,
        /// End (exclusive); `None` for an empty `end` argument: to the end of the key space.
        end: Option<Bytes>,
        /// Most pairs returned.
        limit: usize,
    },
    /// `COMMAND [COUNT | LIST | INFO name… | DOCS …]`.
    Describe(CommandQuery),
    /// `CONFIG GET parameter…`: Flotilla has no Redis configuration, so always empty.
    ConfigGet,
    /// `SELECT 0`: the only database.
    Select,
    /// `CLIENT SETNAME name`.
    ClientSetName(Bytes),
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT SETINFO …`: accepted; Flotilla does not keep client library names.
    ClientSetInfo,
    /// `QUIT`: answer OK, then close.
    Quit,
    /// `FLOTILLA.NODE`: the id of the node serving this connection.
    NodeId,
    /// `FLOTILLA.REGIONS`: the node's routing table.
    Regions,
    /// `FLOTILLA.REGIONS ALL`: every region of the cluster the node knows of (gossip),
    /// whether or not it holds a replica.
    ClusterRegions,
    /// `FLOTILLA.SESSION client_id seq <write command…>`: the write, with the client's own
    /// session instead of one of the server's, so the client's retries apply once.
    Session {
        /// The client id.
        client_id: u64,
        /// The sequence of this write within the client id.
        seq: u64,
        /// The wrapped write: `Set`, `Del`, `MSet` or `IncrBy`, never another `Session`.
        write: Box<Command>,
    },
    /// `FLOTILLA.ROUTE region_id version conf_ver <command…>`: the command, checked against
    /// the region the client routed it to (a stale route answers `EPOCHNOTMATCH`).
    Route {
        /// The region and epoch the client's cache had.
        route: ExpectedRoute,
        /// The wrapped command: a keyed read or write, or a `Session`; never another `Route`.
        command: Box<Command>,
    },
}

/// What `COMMAND` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandQuery {
    /// `COMMAND`: details of every command.
    All,
    /// `COMMAND COUNT`.
    Count,
    /// `COMMAND LIST`.
    List,
    /// `COMMAND INFO name…`.
    Info(Vec<Bytes>),
    /// `COMMAND DOCS …`: no documentation is served (redis-cli falls back to its own).
    Docs,
}

impl Command {
    /// Turns a request into a command. Fails with the reply to send: unknown command, wrong
    /// number of arguments, syntax error. The spec comes back with the error when the command
    /// was known, for the metrics label.
    pub fn parse(
        request: Request,
    ) -> Result<(&'static CommandSpec, Command), (Option<&'static CommandSpec>, Reply)> {
        let Some(name) = request.first() else {
            return Err((None, Reply::err("empty command")));
        };
        let Some(spec) = lookup(name) else {
            return Err((None, unknown_command(&request)));
        };
        let argc = request.len() as i64;
        if (spec.arity >= 0 && argc != spec.arity) || (spec.arity < 0 && argc < -spec.arity) {
            let msg = format!("wrong number of arguments for '{}' command", spec.name);
            return Err((Some(spec), Reply::err(msg)));
        }
        if spec.name == "flotilla.route" {
            return parse_route(request).map_err(|r| (Some(spec), r));
        }
        parse_args(spec, request)
            .map(|c| (spec, c))
            .map_err(|r| (Some(spec), r))
    }
}

/// The table entry for a command name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

fn unknown_command(request: &Request) -> Reply {
    // Redis quotes the name and the first arguments; both are cut so a huge request cannot
    // produce a huge reply.
    const QUOTED_BYTES_MAX: usize = 128;
    let quote =
        |b: &Bytes| String::from_utf8_lossy(&b[..b.len().min(QUOTED_BYTES_MAX)]).into_owned();
    let mut args = String::new();
    for arg in &request[1..] {
        if args.len() >= QUOTED_BYTES_MAX {
            break;
        }
        args.push_str(&format!("'{}' ", quote(arg)));
    }
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {args}",
        quote(&request[0])
    ))
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// A decimal integer argument, as strict as Redis: no sign `+`, no spaces.
pub fn parse_i64(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
}

/// An unsigned decimal argument (a client id, a sequence): digits only.
fn parse_u64(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
}

fn upper(arg: &[u8]) -> Vec<u8> {
    arg.to_ascii_uppercase()
}

fn parse_args(spec: &'static CommandSpec, request: Request) -> Result<Command, Reply> {
    let mut args = request.into_iter();
    args.next(); // the name
    let mut args: Vec<Bytes> = args.collect();
    let cmd = match spec.name {
        "ping" => match args.len() {
            0 => Command::Ping(None),
            1 => Command::Ping(args.pop()),
            _ => return Err(Reply::err("wrong number of arguments for 'ping' command")),
        },
        "echo" => Command::Echo(args.swap_remove(0)),
        "get" => Command::Get(args.swap_remove(0)),
        "set" => parse_set(args)?,
        "del" => Command::Del(args),
        "exists" => Command::Exists(args),
        "mget" => Command::MGet(args),
        "mset" => {
            if !args.len().is_multiple_of(2) {
                return Err(Reply::err("wrong number of arguments for 'mset' command"));
            }
            let mut pairs = Vec::with_capacity(args.len() / 2);
            let mut it = args.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            Command::MSet(pairs)
        }
        "incr" => Command::IncrBy {
            key: args.swap_remove(0),
            delta: 1,
        },
        "decr" => Command::IncrBy {
            key: args.swap_remove(0),
            delta: -1,
        },
        "incrby" | "decrby" => {
            let delta = parse_i64(&args[1]).ok_or_else(not_integer)?;
            let delta = if spec.name == "decrby" {
                delta
                    .checked_neg()
                    .ok_or_else(|| Reply::err("decrement would overflow"))?
            } else {
                delta
            };
            Command::IncrBy {
                key: args.swap_remove(0),
                delta,
            }
        }
        "scan" => parse_scan(args)?,
        "range" => parse_range(args)?,
        "command" => parse_command_query(args)?,
        "config" => match upper(&args[0]).as_slice() {
            b"GET" if args.len() >= 2 => Command::ConfigGet,
            b"GET" => {
                return Err(Reply::err(
                    "wrong number of arguments for 'config|get' command",
                ))
            }
            b"SET" | b"RESETSTAT" | b"REWRITE" => {
                return Err(Reply::err(format!(
                    "CONFIG {} is not supported: Flotilla is configured with flags or a TOML file",
                    String::from_utf8_lossy(&upper(&args[0]))
                )))
            }
            _ => return Err(unknown_subcommand("CONFIG", &args[0])),
        },
        "select" => match parse_i64(&args[0]) {
            Some(0) => Command::Select,
            Some(_) => {
                return Err(Reply::err(
                    "DB index is out of range (Flotilla has one keyspace, 0)",
                ))
            }
            None => return Err(not_integer()),
        },
        "client" => match (upper(&args[0]).as_slice(), args.len()) {
            (b"SETNAME", 2) => Command::ClientSetName(args.swap_remove(1)),
            (b"GETNAME", 1) => Command::ClientGetName,
            (b"SETINFO", 3) => Command::ClientSetInfo,
            (b"SETNAME" | b"GETNAME" | b"SETINFO", _) => {
                let sub = String::from_utf8_lossy(&args[0]).to_lowercase();
                return Err(Reply::err(format!(
                    "wrong number of arguments for 'client|{sub}' command"
                )));
            }
            _ => return Err(unknown_subcommand("CLIENT", &args[0])),
        },
        "quit" => Command::Quit,
        "flotilla.node" => Command::NodeId,
        "flotilla.regions" => match args.as_slice() {
            [] => Command::Regions,
            [scope] if upper(scope).as_slice() == b"ALL" => Command::ClusterRegions,
            [_] => return Err(Reply::err("FLOTILLA.REGIONS takes no argument or ALL")),
            _ => {
                return Err(Reply::err(
                    "wrong number of arguments for 'flotilla.regions' command",
                ))
            }
        },
        "flotilla.session" => parse_session(args)?,
        // Parsed before the table's parsers (its spec is the wrapped command's).
        "flotilla.route" => return Err(Reply::err("FLOTILLA.ROUTE cannot be wrapped")),
        other => unreachable!("command table entry {other} has no parser"),
    };
    Ok(cmd)
}

fn unknown_subcommand(command: &str, sub: &Bytes) -> Reply {
    let sub = String::from_utf8_lossy(&sub[..sub.len().min(64)]).into_owned();
    Reply::err(format!("unknown subcommand '{sub}'. Try {command} HELP."))
}

/// `FLOTILLA.SESSION client_id seq <write…>`: the ids, then the wrapped request parsed as a
/// command of its own, which must be a data write.
fn parse_session(mut args: Vec<Bytes>) -> Result<Command, Reply> {
    let bad_id = || Reply::err("client id and sequence must be unsigned integers");
    let client_id = parse_u64(&args[0]).ok_or_else(bad_id)?;
    let seq = parse_u64(&args[1]).ok_or_else(bad_id)?;
    let inner: Request = args.split_off(2);
    let (spec, write) = Command::parse(inner).map_err(|(_, reply)| reply)?;
    if matches!(write, Command::Route { .. }) {
        return Err(Reply::err(
            "FLOTILLA.SESSION wraps one write command, not 'flotilla.route' (FLOTILLA.ROUTE goes outside: FLOTILLA.ROUTE … FLOTILLA.SESSION … <write>)",
        ));
    }
    if spec.access != Access::Write || spec.name == "flotilla.session" {
        return Err(Reply::err(format!(
            "FLOTILLA.SESSION wraps one write command (SET, DEL, MSET, INCR, INCRBY, DECR, DECRBY), not '{}'",
            spec.name
        )));
    }
    Ok(Command::Session {
        client_id,
        seq,
        write: Box::new(write),
    })
}

/// Commands `FLOTILLA.ROUTE` wraps: those that name keys of one region.
const ROUTABLE: &[&str] = &[
    "get",
    "exists",
    "mget",
    "range",
    "set",
    "del",
    "mset",
    "incr",
    "incrby",
    "decr",
    "decrby",
    "flotilla.session",
];

/// `FLOTILLA.ROUTE region_id version conf_ver <command…>`: the route, then the wrapped
/// request parsed as a command of its own, which must name keys (a read, a write, or a
/// `FLOTILLA.SESSION` around a write). Answers the wrapped command's spec, so pipelining
/// and the metrics treat it as that command.
fn parse_route(request: Request) -> Result<(&'static CommandSpec, Command), Reply> {
    let mut args = request;
    let bad = || Reply::err("region id, version and conf_ver must be unsigned integers");
    let region_id = parse_u64(&args[1]).ok_or_else(bad)?;
    let version = parse_u64(&args[2]).ok_or_else(bad)?;
    let conf_ver = parse_u64(&args[3]).ok_or_else(bad)?;
    let inner: Request = args.split_off(4);
    let (spec, command) = Command::parse(inner).map_err(|(_, reply)| reply)?;
    // A nested route answers the wrapped command's spec, so it is told apart by its form.
    if !ROUTABLE.contains(&spec.name) || matches!(command, Command::Route { .. }) {
        return Err(Reply::err(format!(
            "FLOTILLA.ROUTE wraps one keyed command (GET, EXISTS, MGET, RANGE, SET, DEL, MSET, INCR, INCRBY, DECR, DECRBY, FLOTILLA.SESSION), not '{}'",
            if matches!(command, Command::Route { .. }) { "flotilla.route" } else { spec.name }
        )));
    }
    let route = ExpectedRoute {
        region_id,
        epoch: EpochStatus { conf_ver, version },
    };
    Ok((
        spec,
        Command::Route {
            route,
            command: Box::new(command),
        },
    ))
}

fn parse_set(args: Vec<Bytes>) -> Result<Command, Reply> {
    let mut args = args.into_iter();
    let (Some(key), Some(value)) = (args.next(), args.next()) else {
        return Err(Reply::err("wrong number of arguments for 'set' command"));
    };
    let mut cond = PutCondition::Always;
    for opt in args {
        let opt = upper(&opt);
        match opt.as_slice() {
            b"NX" | b"XX" if cond != PutCondition::Always => return Err(syntax_error()),
            b"NX" => cond = PutCondition::IfAbsent,
            b"XX" => cond = PutCondition::IfPresent,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" | b"KEEPTTL" => {
                return Err(Reply::err(format!(
                    "SET {} is not supported: Flotilla keys do not expire",
                    String::from_utf8_lossy(&opt)
                )))
            }
            b"GET" => return Err(Reply::err("SET GET is not supported")),
            _ => return Err(syntax_error()),
        }
    }
    Ok(Command::Set { key, value, cond })
}

fn parse_scan(args: Vec<Bytes>) -> Result<Command, Reply> {
    let cursor = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Reply::err("invalid cursor"))?;
    let mut pattern = None;
    let mut count = SCAN_COUNT_DEFAULT;
    let mut any_type = true;
    let mut rest = args.into_iter().skip(1);
    while let Some(opt) = rest.next() {
        let value = rest.next().ok_or_else(syntax_error)?;
        match upper(&opt).as_slice() {
            b"MATCH" => pattern = Some(value),
            b"COUNT" => {
                let n = parse_i64(&value).ok_or_else(not_integer)?;
                if n < 1 {
                    return Err(syntax_error());
                }
                count = usize::try_from(n).unwrap_or(usize::MAX).min(SCAN_COUNT_MAX);
            }
            b"TYPE" => any_type = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax_error()),
        }
    }
    Ok(Command::Scan {
        cursor,
        pattern,
        count,
        any_type,
    })
}

fn parse_range(args: Vec<Bytes>) -> Result<Command, Reply> {
    let mut args = args.into_iter();
    let (Some(start), Some(end)) = (args.next(), args.next()) else {
        return Err(Reply::err("wrong number of arguments for 'range' command"));
    };
    let mut limit = RANGE_LIMIT_DEFAULT;
    match (args.next(), args.next(), args.next()) {
        (None, _, _) => {}
        (Some(opt), Some(n), None) if opt.eq_ignore_ascii_case(b"LIMIT") => {
            limit = parse_i64(&n)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=RANGE_LIMIT_MAX).contains(n))
                .ok_or_else(|| {
                    Reply::err(format!("LIMIT must be between 1 and {RANGE_LIMIT_MAX}"))
                })?;
        }
        _ => return Err(syntax_error()),
    }
    let end = (!end.is_empty()).then_some(end);
    Ok(Command::Range { start, end, limit })
}

fn parse_command_query(args: Vec<Bytes>) -> Result<Command, Reply> {
    let Some(sub) = args.first() else {
        return Ok(Command::Describe(CommandQuery::All));
    };
    let query = match upper(sub).as_slice() {
        b"COUNT" => CommandQuery::Count,
        b"LIST" => CommandQuery::List,
        b"DOCS" => CommandQuery::Docs,
        b"INFO" => CommandQuery::Info(args[1..].to_vec()),
        _ => return Err(unknown_subcommand("COMMAND", sub)),
    };
    Ok(Command::Describe(query))
}

impl CommandSpec {
    /// The `COMMAND INFO` entry: name, arity, flags, first key, last key, step.
    pub fn info(&self) -> Reply {
        Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(self.name.as_bytes())),
            Reply::Integer(self.arity),
            Reply::Array(self.flags.iter().map(|f| Reply::Simple(f)).collect()),
            Reply::Integer(self.first_key),
            Reply::Integer(self.last_key),
            Reply::Integer(self.step),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(words: &[&str]) -> Request {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn parse(words: &[&str]) -> Result<Command, String> {
        Command::parse(req(words))
            .map(|(_, c)| c)
            .map_err(|(_, r)| match r {
                Reply::Error(e) => e,
                other => panic!("not an error: {other:?}"),
            })
    }

    #[test]
    fn every_table_entry_parses() {
        // Every entry has a parser arm (the table and the match cannot drift apart).
        for spec in COMMANDS {
            let mut words = vec![spec.name.to_string()];
            words.extend((1..spec.arity.unsigned_abs()).map(|_| "0".to_string()));
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let _ = parse(&words);
        }
    }

    #[test]
    fn set_options() {
        let set = |o: &[&str]| parse(&[&["set", "k", "v"], o].concat());
        assert!(matches!(
            set(&["nx"]),
            Ok(Command::Set {
                cond: PutCondition::IfAbsent,
                ..
            })
        ));
        assert!(matches!(
            set(&["XX"]),
            Ok(Command::Set {
                cond: PutCondition::IfPresent,
                ..
            })
        ));
        assert_eq!(set(&["NX", "XX"]), Err("ERR syntax error".into()));
        assert_eq!(
            set(&["EX", "10"]),
            Err("ERR SET EX is not supported: Flotilla keys do not expire".into())
        );
        assert_eq!(set(&["BOGUS"]), Err("ERR syntax error".into()));
    }

    #[test]
    fn arity_and_unknown() {
        assert_eq!(
            parse(&["GET"]),
            Err("ERR wrong number of arguments for 'get' command".into())
        );
        assert_eq!(
            parse(&["mset", "a", "1", "b"]),
            Err("ERR wrong number of arguments for 'mset' command".into())
        );
        assert_eq!(
            parse(&["FLUSHALL", "ASYNC"]),
            Err("ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' ".into())
        );
    }

    #[test]
    fn counters_and_ranges() {
        assert_eq!(
            parse(&["decrby", "k", "5"]),
            Ok(Command::IncrBy {
                key: "k".into(),
                delta: -5
            })
        );
        assert_eq!(
            parse(&["decrby", "k", &i64::MIN.to_string()]),
            Err("ERR decrement would overflow".into())
        );
        assert_eq!(
            parse(&["incrby", "k", "+5"]),
            Err("ERR value is not an integer or out of range".into())
        );
        assert_eq!(
            parse(&["range", "a", "", "limit", "5"]),
            Ok(Command::Range {
                start: "a".into(),
                end: None,
                limit: 5
            })
        );
        assert!(parse(&["range", "a", "b", "limit", "0"]).is_err());
        assert_eq!(
            parse(&["scan", "0", "match", "u*", "count", "999999"]),
            Ok(Command::Scan {
                cursor: 0,
                pattern: Some("u*".into()),
                count: SCAN_COUNT_MAX,
                any_type: true
            })
        );
        assert_eq!(parse(&["scan", "x"]), Err("ERR invalid cursor".into()));
        assert_eq!(
            parse(&["scan", "0", "count"]),
            Err("ERR syntax error".into())
        );
    }

    #[test]
    fn flotilla_commands() {
        assert_eq!(parse(&["FLOTILLA.NODE"]), Ok(Command::NodeId));
        assert_eq!(parse(&["flotilla.regions"]), Ok(Command::Regions));
        assert_eq!(
            parse(&["flotilla.regions", "all"]),
            Ok(Command::ClusterRegions)
        );
        assert!(parse(&["flotilla.regions", "some"]).is_err());
        assert!(parse(&["flotilla.regions", "all", "x"]).is_err());
        assert_eq!(
            parse(&["flotilla.session", "7", "3", "incrby", "k", "5"]),
            Ok(Command::Session {
                client_id: 7,
                seq: 3,
                write: Box::new(Command::IncrBy {
                    key: "k".into(),
                    delta: 5
                }),
            })
        );
        assert_eq!(
            parse(&["flotilla.session", "7", "3", "mset", "a", "1", "b", "2"]),
            Ok(Command::Session {
                client_id: 7,
                seq: 3,
                write: Box::new(Command::MSet(vec![
                    ("a".into(), "1".into()),
                    ("b".into(), "2".into())
                ])),
            })
        );
        // The wrapped command is checked as if sent alone.
        assert_eq!(
            parse(&["flotilla.session", "7", "3", "set", "k"]),
            Err("ERR wrong number of arguments for 'set' command".into())
        );
        assert_eq!(
            parse(&["flotilla.session", "7", "3", "set", "k", "v", "BOGUS"]),
            Err("ERR syntax error".into())
        );
        assert!(parse(&["flotilla.session", "7", "3", "get", "k"])
            .unwrap_err()
            .contains("wraps one write command"));
        assert!(parse(&[
            "flotilla.session",
            "1",
            "1",
            "flotilla.session",
            "1",
            "1",
            "del",
            "k"
        ])
        .unwrap_err()
        .contains("wraps one write command"));
        assert!(parse(&["flotilla.session", "-1", "3", "del", "k"])
            .unwrap_err()
            .contains("unsigned"));
        assert!(parse(&["flotilla.session", "1", "x", "del", "k"])
            .unwrap_err()
            .contains("unsigned"));
    }

    #[test]
    fn flotilla_route_wraps_keyed_commands_and_a_session() {
        let route = ExpectedRoute {
            region_id: 7,
            epoch: EpochStatus {
                conf_ver: 1,
                version: 3,
            },
        };
        let parsed = |words: &[&str]| {
            Command::parse(req(words)).map(|(spec, c)| (spec.name, spec.access, c))
        };
        assert_eq!(
            parsed(&["FLOTILLA.ROUTE", "7", "3", "1", "get", "k"]).unwrap(),
            (
                "get",
                Access::Read,
                Command::Route {
                    route,
                    command: Box::new(Command::Get("k".into()))
                }
            )
        );
        assert_eq!(
            parsed(&[
                "flotilla.route",
                "7",
                "3",
                "1",
                "flotilla.session",
                "9",
                "2",
                "set",
                "k",
                "v"
            ])
            .unwrap(),
            (
                "flotilla.session",
                Access::Write,
                Command::Route {
                    route,
                    command: Box::new(Command::Session {
                        client_id: 9,
                        seq: 2,
                        write: Box::new(Command::Set {
                            key: "k".into(),
                            value: "v".into(),
                            cond: PutCondition::Always
                        })
                    })
                }
            )
        );
        assert_eq!(
            parse(&["flotilla.route", "7", "3", "1", "range", "a", "b"]),
            Ok(Command::Route {
                route,
                command: Box::new(Command::Range {
                    start: "a".into(),
                    end: Some("b".into()),
                    limit: RANGE_LIMIT_DEFAULT
                })
            })
        );
        // Bad numbers, bad or unroutable wrapped commands, wrong order and nesting.
        let err = |words: &[&str]| parse(words).unwrap_err();
        assert!(err(&["flotilla.route", "x", "3", "1", "get", "k"]).contains("unsigned"));
        assert!(err(&["flotilla.route", "7", "-3", "1", "get", "k"]).contains("unsigned"));
        assert!(err(&["flotilla.route", "7", "3", "+1", "get", "k"]).contains("unsigned"));
        assert!(err(&["flotilla.route", "7", "3", "1"]).contains("wrong number"));
        assert!(err(&["flotilla.route", "7", "3", "1", "get"]).contains("wrong number"));
        assert!(err(&["flotilla.route", "7", "3", "1", "nosuch", "k"]).contains("unknown command"));
        assert!(err(&["flotilla.route", "7", "3", "1", "scan", "0"]).contains("wraps one keyed"));
        assert!(err(&["flotilla.route", "7", "3", "1", "ping", "x"]).contains("wraps one keyed"));
        assert!(err(&[
            "flotilla.route",
            "7",
            "3",
            "1",
            "flotilla.route",
            "7",
            "3",
            "1",
            "get",
            "k"
        ])
        .contains("wraps one keyed"));
        assert!(err(&[
            "flotilla.session",
            "9",
            "2",
            "flotilla.route",
            "7",
            "3",
            "1",
            "set",
            "k",
            "v"
        ])
        .contains("wraps one write"));
    }
}

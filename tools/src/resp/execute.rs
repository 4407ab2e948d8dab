//! Running a parsed [`Command`]: local commands are answered at once; data commands are
//! submitted to the [`KvService`] at once and answered when their future resolves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::command::{Command, CommandQuery, COMMANDS};
use super::cursor::CursorTable;
use super::glob;
use super::reply::Reply;
use crate::service::{ClientRoute, ClientSession, KvService, RouteEntry};

/// A reply that is still being computed by the service.
pub type PendingReply = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// What running a command gives the connection.
pub enum Outcome {
    /// The answer, known now.
    Ready(Reply),
    /// The command was submitted; the answer comes later.
    Pending(PendingReply),
    /// Send this answer, then close the connection (`QUIT`).
    Close(Reply),
}

/// Per-connection state that commands can see.
#[derive(Debug, Default)]
pub struct Session {
    /// Set by `CLIENT SETNAME`.
    pub name: Option<Bytes>,
}

/// What all connections of one server share.
pub struct Shared {
    /// Where the data lives.
    pub service: Arc<dyn KvService>,
    /// `SCAN` cursors.
    pub cursors: Arc<CursorTable>,
}

/// Runs `cmd`: answers a local command, or submits a data command to the service (the call
/// happens here, so the service sees commands in the order they are run).
pub fn execute(cmd: Command, session: &mut Session, shared: &Shared) -> Outcome {
    let service = &shared.service;
    match cmd {
        Command::Ping(None) => Outcome::Ready(Reply::Simple("PONG")),
        Command::Ping(Some(msg)) | Command::Echo(msg) => Outcome::Ready(Reply::Bulk(msg)),
        Command::Get(_)
        | Command::Set { .. }
        | Command::Del(_)
        | Command::MSet(_)
        | Command::IncrBy { .. }
        | Command::Session { .. }
        | Command::Exists(_)
        | Command::MGet(_)
        | Command::Range { .. } => keyed(cmd, None, service.as_ref()),
        Command::Route { route, command } => keyed(*command, Some(route), service.as_ref()),
        Command::Scan {
            cursor,
            pattern,
            count,
            any_type,
        } => scan(shared, cursor, pattern, count, any_type),
        Command::Describe(query) => Outcome::Ready(command_info(query)),
        Command::ConfigGet => Outcome::Ready(Reply::Array(Vec::new())),
        Command::Select | Command::ClientSetInfo => Outcome::Ready(Reply::Simple("OK")),
        Command::ClientSetName(name) => {
            session.name = (!name.is_empty()).then_some(name);
            Outcome::Ready(Reply::Simple("OK"))
        }
        Command::ClientGetName => Outcome::Ready(Reply::bulk_or_null(session.name.clone())),
        Command::Quit => Outcome::Close(Reply::Simple("OK")),
        Command::NodeId => Outcome::Ready(Reply::unsigned(service.node_id())),
        Command::Regions => Outcome::Ready(regions_reply(service.routes())),
        Command::ClusterRegions => Outcome::Ready(regions_reply(service.cluster_routes())),
    }
}

/// Submits a command that names keys, with the client's route if it sent one
/// (`FLOTILLA.ROUTE`).
fn keyed(cmd: Command, route: ClientRoute, service: &dyn KvService) -> Outcome {
    match cmd {
        Command::Get(key) => {
            let f = service.get(key, route);
            pending(async move { f.await.map(Reply::bulk_or_null) })
        }
        Command::Set { .. } | Command::Del(_) | Command::MSet(_) | Command::IncrBy { .. } => {
            write(cmd, None, route, service)
        }
        Command::Session {
            client_id,
            seq,
            write: inner,
        } => write(*inner, Some((client_id, seq)), route, service),
        Command::Exists(keys) => {
            // Redis counts a key named twice twice.
            let gets: Vec<_> = keys.into_iter().map(|k| service.get(k, route)).collect();
            pending(async move {
                let mut n = 0;
                for g in gets {
                    n += i64::from(g.await?.is_some());
                }
                Ok(Reply::Integer(n))
            })
        }
        Command::MGet(keys) => {
            let gets: Vec<_> = keys.into_iter().map(|k| service.get(k, route)).collect();
            pending(async move {
                let mut values = Vec::with_capacity(gets.len());
                for g in gets {
                    values.push(Reply::bulk_or_null(g.await?));
                }
                Ok(Reply::Array(values))
            })
        }
        Command::Range { start, end, limit } => {
            let f = service.scan(start, end, limit, route);
            pending(async move {
                let pairs = f.await?;
                let mut flat = Vec::with_capacity(pairs.len() * 2);
                for (k, v) in pairs {
                    flat.push(Reply::Bulk(k));
                    flat.push(Reply::Bulk(v));
                }
                Ok(Reply::Array(flat))
            })
        }
        // The parser only wraps the commands above; anything else is refused, not run.
        _ => Outcome::Ready(Reply::err("not a keyed command")),
    }
}

/// Submits a data write, with the client's session if it sent one.
fn write(
    cmd: Command,
    session: ClientSession,
    route: ClientRoute,
    service: &dyn KvService,
) -> Outcome {
    match cmd {
        Command::Set { key, value, cond } => {
            let f = service.put(key, value, cond, session, route);
            pending(async move {
                f.await.map(|written| {
                    if written {
                        Reply::Simple("OK")
                    } else {
                        Reply::Null
                    }
                })
            })
        }
        Command::Del(keys) => {
            let f = service.delete(keys, session, route);
            pending(async move {
                f.await
                    .map(|n| Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
            })
        }
        Command::MSet(pairs) => {
            let f = service.batch_put(pairs, session, route);
            pending(async move { f.await.map(|()| Reply::Simple("OK")) })
        }
        Command::IncrBy { key, delta } => {
            let f = service.incr_by(key, delta, session, route);
            pending(async move { f.await.map(Reply::Integer) })
        }
        // The parser only wraps the writes above; anything else is refused, not run.
        _ => Outcome::Ready(Reply::err("not a write command")),
    }
}

/// `FLOTILLA.REGIONS`: one `[id, start, end, version, conf_ver, leader or nil]` per region.
fn regions_reply(routes: Vec<RouteEntry>) -> Reply {
    Reply::Array(
        routes
            .into_iter()
            .map(|r| {
                Reply::Array(vec![
                    Reply::unsigned(r.id),
                    Reply::Bulk(r.start_key),
                    Reply::Bulk(r.end_key),
                    Reply::unsigned(r.epoch.version),
                    Reply::unsigned(r.epoch.conf_ver),
                    r.leader.map_or(Reply::Null, Reply::unsigned),
                ])
            })
            .collect(),
    )
}

fn pending<F>(f: F) -> Outcome
where
    F: Future<Output = Result<Reply, crate::service::ServiceError>> + Send + 'static,
{
    Outcome::Pending(Box::pin(async move {
        match f.await {
            Ok(reply) => reply,
            Err(e) => Reply::from_service_error(&e),
        }
    }))
}

/// One page of `SCAN`: reads `count` keys from where the cursor points (or from the literal
/// prefix of the pattern, if that is further on), keeps those that match, and hands back a
/// cursor for the rest ("0" when the key space, or the prefix, is exhausted).
fn scan(
    shared: &Shared,
    cursor: u64,
    pattern: Option<Bytes>,
    count: usize,
    any_type: bool,
) -> Outcome {
    let mut start = if cursor == 0 {
        Bytes::new()
    } else {
        match shared.cursors.get(cursor) {
            Some(key) => key,
            None => return Outcome::Ready(Reply::err("invalid cursor: unknown or expired")),
        }
    };
    let mut end = None;
    if let Some(p) = &pattern {
        let prefix = glob::literal_prefix(p);
        if !prefix.is_empty() {
            end = successor_of_prefix(&prefix);
            if start.as_ref() < prefix.as_slice() {
                start = Bytes::from(prefix);
            }
        }
    }
    if end.as_ref().is_some_and(|e| *e <= start) {
        return Outcome::Ready(scan_reply(0, Vec::new()));
    }
    let f = shared.service.scan(start, end.clone(), count, None);
    let cursors = Arc::clone(&shared.cursors);
    pending(async move {
        let pairs = f.await?;
        let next = match pairs.last() {
            Some((last, _)) if pairs.len() >= count => {
                // The smallest key after `last`.
                let mut resume = Vec::with_capacity(last.len() + 1);
                resume.extend_from_slice(last);
                resume.push(0);
                let resume = Bytes::from(resume);
                match &end {
                    Some(e) if resume >= *e => 0,
                    _ => cursors.insert(resume),
                }
            }
            _ => 0,
        };
        let keys = pairs
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| any_type && pattern.as_ref().is_none_or(|p| glob::matches(p, k)))
            .map(Reply::Bulk)
            .collect();
        Ok(scan_reply(next, keys))
    })
}

fn scan_reply(next: u64, keys: Vec<Reply>) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::Array(keys),
    ])
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is
/// none (the prefix is all 0xff).
fn successor_of_prefix(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

fn command_info(query: CommandQuery) -> Reply {
    match query {
        CommandQuery::All => Reply::Array(COMMANDS.iter().map(|s| s.info()).collect()),
        CommandQuery::Count => Reply::Integer(COMMANDS.len() as i64),
        CommandQuery::List => Reply::Array(
            COMMANDS
                .iter()
                .map(|s| Reply::Bulk(Bytes::from_static(s.name.as_bytes())))
                .collect(),
        ),
        CommandQuery::Info(names) => Reply::Array(
            names
                .iter()
                .map(|n| super::command::lookup(n).map_or(Reply::Null, |s| s.info()))
                .collect(),
        ),
        CommandQuery::Docs => Reply::Array(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor() {
        assert_eq!(successor_of_prefix(b"ab"), Some(Bytes::from("ac")));
        assert_eq!(successor_of_prefix(b"a\xff"), Some(Bytes::from("b")));
        assert_eq!(successor_of_prefix(b"\xff\xff"), None);
    }
}

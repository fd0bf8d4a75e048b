//! The access log: one line per request, off the request's thread.
//!
//! Writing a line synchronously through `log` cost 14 % of throughput (issue #16 item 14),
//! so a request only hands a small [`Record`] to a bounded queue; a thread of its own
//! formats the lines (`logfmt` or JSON) and writes them in batches, flushing whenever the
//! queue runs empty, so lines still appear at once when traffic is light. A full queue
//! drops the line and counts it (`streamgate_access_log_dropped_total`) rather than slow
//! the proxy down, as nginx's buffered `access_log` trades durability for speed. `SIGUSR1`
//! reopens a file destination after a rotation.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use log::warn;
use prometheus::IntCounter;

use crate::config::{LogFormat, LogSection};
use crate::identity::{StreamId, UserTag};

/// Lines waiting for the writer, at most; past it they are dropped and counted.
const QUEUE: usize = 16 * 1024;

/// Largest batch of formatted bytes kept before writing.
const BUFFER: usize = 64 * 1024;

/// One request, as the access line says it.
#[derive(Debug, Clone)]
pub struct Record {
    pub at: SystemTime,
    pub method: http::Method,
    /// The path without the query (stream ids and tokens stay out of the log).
    pub path: String,
    /// `0` when the client left before an answer.
    pub status: u16,
    pub route: &'static str,
    pub user: Option<UserTag>,
    pub stream: Option<StreamId>,
    pub via: &'static str,
    pub decision: Option<&'static str>,
    pub upstream_status: Option<u16>,
    pub duration: Duration,
    pub error: Option<&'static str>,
}

enum Message {
    Line(Box<Record>),
    Reopen,
    Flush(SyncSender<()>),
}

/// The handle requests log through; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    queue: Option<SyncSender<Message>>,
    dropped: IntCounter,
}

enum Sink {
    Stderr,
    File(PathBuf),
}

impl AccessLog {
    /// Start the writer thread the config asks for (none for `access = "off"`). A file
    /// that cannot be opened is an error naming it.
    pub fn start(config: &LogSection, dropped: IntCounter) -> io::Result<Self> {
        let sink = match config.access.as_str() {
            "off" => {
                return Ok(Self {
                    queue: None,
                    dropped,
                })
            }
            "stderr" => Sink::Stderr,
            path => Sink::File(PathBuf::from(path)),
        };
        let out = sink.open()?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let format = config.format;
        std::thread::Builder::new()
            .name("access log".into())
            .spawn(move || write_lines(rx, sink, out, format))?;
        Ok(Self {
            queue: Some(tx),
            dropped,
        })
    }

    /// A log that writes nothing (unit tests that build a proxy without one).
    #[cfg(test)]
    pub fn off(dropped: IntCounter) -> Self {
        Self {
            queue: None,
            dropped,
        }
    }

    /// Queue one request's line; never blocks.
    pub fn log(&self, record: Record) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Message::Line(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Reopen a file destination (after logrotate moved it away).
    pub fn reopen(&self) {
        if let Some(queue) = &self.queue {
            let _ = queue.try_send(Message::Reopen);
        }
    }

    /// Wait (at most `within`) until every line queued so far is written: before exiting.
    pub fn flush(&self, within: Duration) {
        let Some(queue) = &self.queue else { return };
        let (done, wait) = mpsc::sync_channel(1);
        if queue.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }
}

impl Sink {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::Stderr => Box::new(io::stderr()),
            Sink::File(path) => Box::new(open_append(path)?),
        })
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer thread: format, batch, flush when the queue runs empty.
fn write_lines(rx: Receiver<Message>, sink: Sink, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = BufWriter::with_capacity(BUFFER, out);
    let mut line = String::with_capacity(256);
    loop {
        let message = match rx.try_recv() {
            Ok(m) => m,
            Err(_) => {
                // Idle: what is batched goes out now.
                let _ = out.flush();
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        match message {
            Message::Line(record) => {
                line.clear();
                format_line(&mut line, &record, format);
                if let Err(e) = out.write_all(line.as_bytes()) {
                    warn!("cannot write the access log: {e}");
                }
            }
            Message::Reopen => {
                let _ = out.flush();
                match sink.open() {
                    Ok(fresh) => out = BufWriter::with_capacity(BUFFER, fresh),
                    Err(e) => warn!("cannot reopen the access log: {e}"),
                }
            }
            Message::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

/// One access line, newline included.
pub fn format_line(out: &mut String, r: &Record, format: LogFormat) {
    let at = humantime::format_rfc3339_millis(r.at);
    let ms = r.duration.as_secs_f64() * 1000.0;
    let stream = r.stream.map(|s| s.hyphenated().to_string());
    let user = r.user.map(|u| u.to_string());
    match format {
        LogFormat::Logfmt => {
            let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
            let _ = write!(
                out,
                "ts={at} method={} path={} status={} route={} user={} stream={} via={} decision={} upstream_status={} duration_ms={ms:.3}",
                r.method,
                logfmt_value(&r.path),
                r.status,
                r.route,
                dash(user.as_deref()),
                dash(stream.as_deref()),
                r.via,
                r.decision.unwrap_or("-"),
                r.upstream_status.map_or_else(|| "-".into(), |s| s.to_string()),
            );
            if let Some(e) = r.error {
                let _ = write!(out, " error={e}");
            }
        }
        LogFormat::Json => {
            let v = serde_json::json!({
                "ts": at.to_string(),
                "method": r.method.as_str(),
                "path": r.path,
                "status": r.status,
                "route": r.route,
                "user": user,
                "stream": stream,
                "via": r.via,
                "decision": r.decision,
                "upstream_status": r.upstream_status,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
                "error": r.error,
            });
            let _ = write!(out, "{v}");
        }
    }
    out.push('\n');
}

/// A path as a logfmt value: quoted (with `"` and `\` escaped) when it has a space, a
/// quote or an `=`; paths reaching here are visible ASCII (`routing::canonical`), except
/// those Pingora let through on routes that are not checked.
fn logfmt_value(v: &str) -> String {
    if v.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
    {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_590_000_123),
            method: http::Method::GET,
            path: "/watch/seg1.ts".into(),
            status: 200,
            route: "watch",
            user: None,
            stream: Some(uuid::Uuid::nil()),
            via: "param",
            decision: Some("renewed"),
            upstream_status: Some(200),
            duration: Duration::from_micros(1234),
            error: None,
        }
    }

    #[test]
    fn logfmt_lines_have_every_field_in_order() {
        let mut out = String::new();
        format_line(&mut out, &record(), LogFormat::Logfmt);
        assert_eq!(
            out,
            "ts=2025-12-01T11:53:20.123Z method=GET path=/watch/seg1.ts status=200 route=watch \
             user=- stream=00000000-0000-0000-0000-000000000000 via=param decision=renewed \
             upstream_status=200 duration_ms=1.234\n"
        );
    }

    #[test]
    fn json_lines_parse_and_paths_are_quoted_when_needed() {
        let mut out = String::new();
        let mut r = record();
        r.path = "/a b\"c".into();
        r.error = Some("ConnectionClosed");
        format_line(&mut out, &r, LogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["path"], "/a b\"c");
        assert_eq!(v["user"], serde_json::Value::Null);
        assert_eq!(v["error"], "ConnectionClosed");
        assert_eq!(v["duration_ms"], 1.234);
        out.clear();
        format_line(&mut out, &r, LogFormat::Logfmt);
        assert!(out.contains(r#"path="/a b\"c""#), "{out}");
        assert!(out.ends_with("error=ConnectionClosed\n"));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let (tx, _rx) = mpsc::sync_channel(1);
        let log = AccessLog {
            queue: Some(tx),
            dropped: dropped.clone(),
        };
        log.log(record());
        log.log(record());
        log.log(record());
        assert_eq!(dropped.get(), 2);
    }
}

//! The access log: one line per request, off the request's thread.
//!
//! Writing a line synchronously through `log` cost 14 % of throughput (issue #16 item 14),
//! so a request only hands a small [`Record`] to a bounded queue; a thread of its own
//! takes the queued lines every 100 ms, formats them (`logfmt` or JSON) and writes them in
//! one batch. A full queue
//! drops the line and counts it (`streamgate_access_log_dropped_total`) rather than slow
//! the proxy down, as nginx's buffered `access_log` trades durability for speed. `SIGUSR1`
//! reopens a file destination after a rotation.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use log::warn;
use prometheus::IntCounter;

use crate::config::{LogFormat, LogSection};
use crate::identity::{StreamId, UserTag};

/// Lines waiting for the writer, at most; past it they are dropped and counted.
const QUEUE: usize = 16 * 1024;

/// Largest batch of formatted bytes kept before writing.
const BUFFER: usize = 64 * 1024;

/// How often the writer takes the queued lines and writes them out: the longest a line
/// waits (nginx's `flush=` for a buffered `access_log`). With [`QUEUE`] it bounds the rate
/// written without a drop: 16 384 lines per 100 ms.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

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
    Line(Record),
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
        match queue.try_send(Message::Line(record)) {
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

/// The writer thread: every [`FLUSH_EVERY`] it takes whatever is queued, formats it and
/// writes it out in one batch. It never waits *on* the queue, so a request's `try_send`
/// never has a sleeping thread to wake (on a proxy pinned to one core, a wake-up per line
/// cost more than the line itself).
fn write_lines(rx: Receiver<Message>, sink: Sink, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = BufWriter::with_capacity(BUFFER, out);
    let mut line = String::with_capacity(256);
    loop {
        std::thread::sleep(FLUSH_EVERY);
        loop {
            let message = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
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
        let _ = out.flush();
    }
}

/// One access line, newline included.
pub fn format_line(out: &mut String, r: &Record, format: LogFormat) {
    let at = humantime::format_rfc3339_millis(r.at);
    let ms = r.duration.as_secs_f64() * 1000.0;
    match format {
        LogFormat::Logfmt => {
            let _ = write!(
                out,
                "ts={at} method={} path={} status={} route={} user=",
                r.method,
                LogfmtValue(&r.path),
                r.status,
                r.route,
            );
            let _ = match r.user {
                Some(u) => write!(out, "{u}"),
                None => write!(out, "-"),
            };
            let _ = match r.stream {
                Some(s) => write!(out, " stream={}", s.hyphenated()),
                None => write!(out, " stream=-"),
            };
            let _ = write!(
                out,
                " via={} decision={} upstream_status=",
                r.via,
                r.decision.unwrap_or("-")
            );
            let _ = match r.upstream_status {
                Some(s) => write!(out, "{s}"),
                None => write!(out, "-"),
            };
            let _ = write!(out, " duration_ms={ms:.3}");
            if let Some(e) = r.error {
                let _ = write!(out, " error={e}");
            }
        }
        LogFormat::Json => {
            let stream = r.stream.map(|s| s.hyphenated().to_string());
            let user = r.user.map(|u| u.to_string());
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

/// A path as a logfmt value: as it is, or quoted (with `"` and `\\` escaped, control
/// characters as `\\u{..}`) when it has a space, a quote, an `=` or anything but visible
/// ASCII. Paths reaching here are mostly visible ASCII (`routing::canonical`), but routes
/// that are not checked may carry anything Pingora let through.
struct LogfmtValue<'a>(&'a str);

impl std::fmt::Display for LogfmtValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
        {
            return f.write_str(v);
        }
        f.write_char('"')?;
        for c in v.chars() {
            match c {
                '"' | '\\' => {
                    f.write_char('\\')?;
                    f.write_char(c)?;
                }
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
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

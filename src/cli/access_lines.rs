//! How access-log events (target `larder::access`, one per request) become lines.
//!
//! They are `tracing` events like every other line, filtered by `LARDER_LOG`
//! like every other line, and written in the same shape as the `fmt` layer's
//! lines in the same format (flattened JSON objects, or `LEVEL target: message
//! field=value…` text). What differs is the cost: the `fmt` layer's JSON
//! formatter gathers an event's fields into a map of allocated values before it
//! writes them, which at one event per request costs more than answering a
//! narinfo lookup. This layer visits the fields in order and writes each
//! straight into a reused per-thread buffer (values escaped by `serde_json`),
//! then appends the line to the batched log writer.

use std::cell::RefCell;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::log_writer::BufferedStderr;

/// The target of access-log events.
pub const ACCESS_TARGET: &str = "larder::access";

/// The shape of the lines.
#[derive(Clone, Copy, Debug)]
pub enum Style {
    Json,
    Text { time: bool, ansi: bool },
}

/// The layer that writes access-log events (and only those).
pub struct AccessLines {
    out: BufferedStderr,
    style: Style,
}

impl AccessLines {
    pub fn new(out: BufferedStderr, style: Style) -> AccessLines {
        AccessLines { out, style }
    }
}

/// A line and a scratch string for values written through `Debug`/`Display`.
#[derive(Default)]
struct Buffers {
    line: Vec<u8>,
    scratch: String,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

impl<S: Subscriber> Layer<S> for AccessLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET {
            return;
        }
        let write = |b: &mut Buffers| {
            b.line.clear();
            self.format(event, *meta.level(), b);
            self.out.write_batched(&b.line);
        };
        let done = BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => {
                write(&mut b);
                true
            }
            Err(_) => false,
        });
        if !done {
            // Only when an event is written while this thread writes one.
            write(&mut Buffers::default());
        }
    }
}

impl AccessLines {
    fn format(&self, event: &Event<'_>, level: Level, b: &mut Buffers) {
        let Buffers { line, scratch } = b;
        scratch.clear();
        match self.style {
            Style::Json => {
                line.extend_from_slice(b"{\"timestamp\":");
                timestamp(scratch);
                json_str(line, scratch);
                line.extend_from_slice(b",\"level\":");
                json_str(line, level.as_str());
                event.record(&mut JsonFields { line, scratch });
                line.extend_from_slice(b",\"target\":");
                json_str(line, ACCESS_TARGET);
                line.extend_from_slice(b"}\n");
            }
            Style::Text { time, ansi } => {
                if time {
                    timestamp(scratch);
                    paint(line, ansi, DIM, scratch);
                    line.push(b' ');
                }
                let level_text = match level {
                    Level::ERROR => "ERROR",
                    Level::WARN => " WARN",
                    Level::INFO => " INFO",
                    Level::DEBUG => "DEBUG",
                    Level::TRACE => "TRACE",
                };
                paint(line, ansi, level_colour(level), level_text);
                line.push(b' ');
                paint(line, ansi, DIM, ACCESS_TARGET);
                paint(line, ansi, DIM, ":");
                event.record(&mut TextFields {
                    line,
                    scratch,
                    ansi,
                });
                line.push(b'\n');
            }
        }
    }
}

/// Now, as the `fmt` layer writes it (RFC 3339, UTC, microseconds).
fn timestamp(out: &mut String) {
    let _ = write!(
        out,
        "{}",
        humantime::format_rfc3339_micros(std::time::SystemTime::now())
    );
}

const DIM: &str = "\x1b[2m";
const ITALIC: &str = "\x1b[3m";
const RESET: &str = "\x1b[0m";

fn level_colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        Level::TRACE => "\x1b[35m",
    }
}

fn paint(line: &mut Vec<u8>, ansi: bool, style: &str, text: &str) {
    if ansi {
        line.extend_from_slice(style.as_bytes());
    }
    line.extend_from_slice(text.as_bytes());
    if ansi {
        line.extend_from_slice(RESET.as_bytes());
    }
}

/// `s` as a JSON string (quoted and escaped). Most values (ids, names, paths)
/// need no escaping and are copied as they are; the rest go through
/// `serde_json`.
fn json_str(line: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        line.reserve(s.len() + 2);
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else if serde_json::to_writer(&mut *line, s).is_err() {
        line.extend_from_slice(b"\"\"");
    }
}

/// Fields as `,"name":value` (flattened into the line's object, as the `fmt`
/// layer's JSON lines have them).
struct JsonFields<'a> {
    line: &'a mut Vec<u8>,
    scratch: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(b',');
        json_str(self.line, field.name());
        self.line.push(b':');
    }

    fn number(&mut self, field: &Field, v: impl serde::Serialize) {
        self.key(field);
        if serde_json::to_writer(&mut *self.line, &v).is_err() {
            self.line.extend_from_slice(b"null");
        }
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_str(self.line, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        self.key(field);
        json_str(self.line, self.scratch);
    }
}

/// Fields as ` message name=value…`, as the `fmt` layer's text lines have them.
struct TextFields<'a> {
    line: &'a mut Vec<u8>,
    scratch: &'a mut String,
    ansi: bool,
}

impl TextFields<'_> {
    fn field(&mut self, field: &Field) {
        self.line.push(b' ');
        if field.name() != "message" {
            paint(self.line, self.ansi, ITALIC, field.name());
            paint(self.line, self.ansi, DIM, "=");
        }
        self.line.extend_from_slice(self.scratch.as_bytes());
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Bare, as `%value` would be: access-log values (paths, names, ids)
        // hold no spaces.
        self.scratch.clear();
        self.scratch.push_str(value);
        self.field(field);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        self.field(field);
    }
}

#[cfg(test)]
mod tests {
    use super::json_str;

    #[test]
    fn json_strings_are_escaped_only_when_they_need_it() {
        for s in [
            "/team-a/abc.narinfo",
            "",
            "a\"quote",
            "back\\slash",
            "tab\there",
            "ünïcode",
            "\u{7f}del",
        ] {
            let mut line = Vec::new();
            json_str(&mut line, s);
            let back: String = serde_json::from_slice(&line).expect("valid JSON");
            assert_eq!(back, s);
            assert_eq!(line, serde_json::to_vec(s).expect("serialises"));
        }
    }
}

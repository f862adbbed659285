//! Log set-up: `--log FILE`, `--log-format text|json`, `--debug`.
//!
//! `--log-format json` writes runc's (logrus') line shape, which conmon,
//! Podman and containerd's go-runc parse: `{"level":"info","msg":"…",
//! "time":"2026-11-22T06:00:00Z"}` plus the event's fields as extra keys.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    path::Path,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{fmt, format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

use crate::LogFormat;

/// Routes tracing output to `file` (appending) or to stderr.
pub fn init(file: Option<&Path>, format: LogFormat, debug: bool) -> anyhow::Result<()> {
    // libcgroups warns about every v1 controller the host lacks, and
    // libcontainer's seccomp about every syscall libseccomp does not know, on
    // every container-mode operation: only their errors matter without --debug.
    let level = if debug {
        "debug"
    } else {
        "info,libcgroups=error,libcontainer::seccomp=error"
    };
    let filter = EnvFilter::try_from_env("SKERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt().with_env_filter(filter).with_ansi(false);
    match file {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            let writer = Mutex::new(f);
            match format {
                LogFormat::Json => builder.event_format(RuncJson).with_writer(writer).init(),
                LogFormat::Text => builder.with_writer(writer).init(),
            }
        }
        None => {
            // Without --log only warnings reach stderr, unless --debug; none
            // of libcontainer's: its container init shares the container's
            // stderr, and its errors come back to us to be printed once.
            let filter = if debug {
                "debug"
            } else {
                "warn,libcgroups=off,libcontainer=off"
            };
            let builder = fmt()
                .with_env_filter(EnvFilter::new(filter))
                .with_ansi(false)
                .with_writer(std::io::stderr);
            match format {
                LogFormat::Json => builder.event_format(RuncJson).init(),
                LogFormat::Text => builder.init(),
            }
        }
    }
    Ok(())
}

/// Formats events as runc's JSON log lines. Keys are sorted, as logrus (Go's
/// map encoding) sorts them; a field named like a fixed key gets the
/// `fields.` prefix, as in logrus.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuncJson;

impl<S, N> FormatEvent<S, N> for RuncJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let line = runc_json_line(event, SystemTime::now());
        writeln!(writer, "{line}")
    }
}

/// One event as a runc JSON log line (without the newline).
fn runc_json_line(event: &Event<'_>, now: SystemTime) -> String {
    let mut visitor = FieldVisitor::default();
    event.record(&mut visitor);
    let mut map = visitor.fields;
    map.insert(
        "level".into(),
        logrus_level(event.metadata().level()).into(),
    );
    map.insert("msg".into(), visitor.message.unwrap_or_default().into());
    map.insert("time".into(), rfc3339_utc(now).into());
    serde_json::to_string(&map).expect("a map of JSON values serialises")
}

/// logrus level names (note "warning").
fn logrus_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// Collects an event's message and fields as JSON values.
#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    fields: BTreeMap<String, serde_json::Value>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            return;
        }
        let key = match name {
            "level" | "msg" | "time" => format!("fields.{name}"),
            _ => name.to_string(),
        };
        self.fields.insert(key, value);
    }
}

impl tracing::field::Visit for FieldVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, skerry_container::error_chain(value).into());
    }
}

/// `t` as RFC 3339 in UTC with whole seconds, e.g. `2026-11-22T06:00:00Z`.
fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Lines logged by `f` through the runc JSON format.
    fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = fmt()
            .with_env_filter(EnvFilter::new("debug"))
            .with_ansi(false)
            .event_format(RuncJson)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    #[test]
    fn json_lines_have_runcs_shape() {
        let err = io::Error::other("disk on fire");
        let lines = capture(|| {
            tracing::info!(
                container = "c1",
                pid = 42_u32,
                ok = true,
                "container started"
            );
            tracing::warn!(error = %err, "cleanup slow");
            tracing::error!(msg = "clash", "the \"real\" message");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let first = lines[0].as_object().unwrap();
        assert_eq!(first["level"], "info");
        assert_eq!(first["msg"], "container started");
        assert_eq!(first["container"], "c1");
        assert_eq!(first["pid"], 42);
        assert_eq!(first["ok"], true);
        let keys: Vec<&String> = first.keys().collect();
        assert_eq!(keys, ["container", "level", "msg", "ok", "pid", "time"]);
        let time = first["time"].as_str().unwrap();
        assert_eq!(time.len(), "2026-11-22T06:00:00Z".len(), "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert_eq!(lines[1]["level"], "warning");
        assert_eq!(lines[1]["error"], "disk on fire");
        assert_eq!(lines[2]["level"], "error");
        assert_eq!(lines[2]["msg"], "the \"real\" message");
        assert_eq!(lines[2]["fields.msg"], "clash");
    }

    #[test]
    fn time_is_rfc3339_utc() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_327_200);
        assert_eq!(rfc3339_utc(t), "2026-11-22T06:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399);
        assert_eq!(rfc3339_utc(leap), "2000-02-29T23:59:59Z");
    }
}

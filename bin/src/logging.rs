//! Process-wide logging: one `tracing` subscriber per process (master or
//! worker), writing to the configured `log_target`, with access logs
//! (target `access`) and the command audit trail (target `audit`) optionally
//! sent elsewhere.
//!
//! Owns the writers for every target kind (stdout, stderr, `file://`,
//! `udp://`, `tcp://`, `unix://`). It must never panic or block the process
//! on a broken log sink: a write that fails is dropped (a log line is not
//! worth a proxy), and a sink that cannot be opened at start is one clear
//! error for the caller to print.
//!
//! The main sink's filter sits behind a reload handle, so Sōzu's `Logging`
//! order changes the level live ([`set_level`]) in the master and in every
//! worker; the access and audit sinks are not filtered by level.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use sozu_command_lib::config::{AccessLogFormat, Config, LogTarget};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Target of the per-flow / per-request access log lines.
pub(crate) const ACCESS_TARGET: &str = "access";
/// Target of the audit line written for every mutating order.
pub(crate) const AUDIT_TARGET: &str = "audit";

/// What a process needs to set its logging up, taken from the configuration
/// (the master) or from its command line (a worker).
#[derive(Debug, Clone)]
pub(crate) struct LogSettings {
    /// `tracing` filter directives, e.g. `info` or `info,sozu_lib=debug`.
    pub level: String,
    pub target: LogTarget,
    pub access_target: Option<LogTarget>,
    /// `access_logs_format`: plain lines or one JSON object per record.
    pub access_format: AccessLogFormat,
    pub audit_target: Option<LogTarget>,
}

impl LogSettings {
    /// The logging part of a loaded configuration.
    pub(crate) fn from_config(config: &Config) -> Self {
        LogSettings {
            level: config.log_level.clone(),
            target: config.log_target.clone(),
            access_target: config.access_logs_target.clone(),
            access_format: config.access_logs_format,
            audit_target: config.audit_logs_target.clone(),
        }
    }
}

/// Renders a target back into the `log_target` spelling (to hand it to a
/// worker on its command line).
pub(crate) fn target_to_string(target: &LogTarget) -> String {
    match target {
        LogTarget::Stdout => "stdout".to_owned(),
        LogTarget::Stderr => "stderr".to_owned(),
        LogTarget::Udp(addr) => format!("udp://{addr}"),
        LogTarget::Tcp(addr) => format!("tcp://{addr}"),
        LogTarget::Unix(path) => format!("unix://{}", path.display()),
        LogTarget::File(path) => format!("file://{}", path.display()),
    }
}

/// Parses the `log_target` spelling (the inverse of [`target_to_string`]).
pub(crate) fn parse_target(text: &str) -> anyhow::Result<LogTarget> {
    let target = match text {
        "stdout" => LogTarget::Stdout,
        "stderr" => LogTarget::Stderr,
        _ => {
            if let Some(rest) = text.strip_prefix("udp://") {
                LogTarget::Udp(
                    rest.parse()
                        .with_context(|| format!("log target {text:?}: bad address"))?,
                )
            } else if let Some(rest) = text.strip_prefix("tcp://") {
                LogTarget::Tcp(
                    rest.parse()
                        .with_context(|| format!("log target {text:?}: bad address"))?,
                )
            } else if let Some(rest) = text.strip_prefix("unix://") {
                LogTarget::Unix(rest.into())
            } else if let Some(rest) = text.strip_prefix("file://") {
                LogTarget::File(rest.into())
            } else {
                anyhow::bail!(
                    "log target {text:?}: expected stdout, stderr, file://PATH, udp://ADDR, tcp://ADDR or unix://PATH"
                );
            }
        }
    };
    Ok(target)
}

/// Installs the process's global subscriber. `process` names the process in
/// every line (`master`, `worker-3`).
///
/// Errors (an unopenable file, a bad filter) are returned for the caller to
/// print; nothing is installed then.
pub(crate) fn init(settings: &LogSettings, process: &str) -> anyhow::Result<()> {
    let main_writer = SinkWriter::open(&settings.target).with_context(|| {
        format!(
            "cannot open log target {}",
            target_to_string(&settings.target)
        )
    })?;
    let access_writer =
        match &settings.access_target {
            Some(t) => Some(SinkWriter::open(t).with_context(|| {
                format!("cannot open access log target {}", target_to_string(t))
            })?),
            None => None,
        };
    let audit_writer = match &settings.audit_target {
        Some(t) => Some(
            SinkWriter::open(t)
                .with_context(|| format!("cannot open audit log target {}", target_to_string(t)))?,
        ),
        None => None,
    };
    let filter = EnvFilter::try_new(&settings.level)
        .with_context(|| format!("log_level {:?} is not a valid filter", settings.level))?;

    let (filter, reload_handle) = reload::Layer::new(filter);

    let json_access = settings.access_format == AccessLogFormat::Json;
    // JSON records get their own layer even when they share the main sink,
    // so every access line is one object whatever else the sink carries.
    let access_writer = match access_writer {
        Some(w) => Some(w),
        None if json_access => Some(main_writer.clone()),
        None => None,
    };
    let separate_access = access_writer.is_some();
    let separate_audit = audit_writer.is_some();
    let ansi = matches!(settings.target, LogTarget::Stdout | LogTarget::Stderr)
        && io::IsTerminal::is_terminal(&io::stderr());
    let process_name: Arc<str> = Arc::from(process);

    let main_layer = tracing_subscriber::fmt::layer()
        .with_writer(main_writer)
        .with_ansi(ansi)
        .with_target(true)
        .event_format(LineFormat::plain(process_name.clone()))
        .with_filter(filter)
        .with_filter(filter_fn(move |meta| {
            let t = meta.target();
            !(separate_access && t == ACCESS_TARGET || separate_audit && t == AUDIT_TARGET)
        }));
    let access_layer = access_writer.map(|w| {
        tracing_subscriber::fmt::layer()
            .with_writer(w)
            .with_ansi(false)
            .event_format(LineFormat::access(process_name.clone(), json_access))
            .with_filter(filter_fn(|meta| meta.target() == ACCESS_TARGET))
    });
    let audit_layer = audit_writer.map(|w| {
        tracing_subscriber::fmt::layer()
            .with_writer(w)
            .with_ansi(false)
            .event_format(LineFormat::plain(process_name.clone()))
            .with_filter(filter_fn(|meta| meta.target() == AUDIT_TARGET))
    });
    tracing_subscriber::registry()
        .with(main_layer)
        .with(access_layer)
        .with(audit_layer)
        .try_init()
        .context("a logger is already installed")?;
    // Only the installed subscriber's handle is kept: a failed init above
    // leaves any earlier one in place.
    let _ = LEVEL.set(Box::new(move |filter| {
        reload_handle
            .reload(filter)
            .map_err(|error| error.to_string())
    }));
    Ok(())
}

/// Swaps the main sink's filter (set once by [`init`]).
type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static LEVEL: OnceLock<Reloader> = OnceLock::new();

/// Replaces the log filter of this process's main sink with `directives`
/// (the `log_level` syntax: `debug`, `info,sozu_lib=trace`). Invalid
/// directives change nothing.
pub(crate) fn set_level(directives: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(directives)
        .with_context(|| format!("{directives:?} is not a valid log filter"))?;
    let reload = LEVEL
        .get()
        .context("logging is not initialised in this process")?;
    reload(filter).map_err(|error| anyhow::anyhow!("cannot change the log filter: {error}"))
}

/// How a layer writes an event: the default fmt line with the process name
/// in front, so the lines of a master and its workers sharing one sink can
/// be told apart; or, for access records in `json` format, one JSON object
/// (`doc/metrics.md` lists its fields).
struct LineFormat {
    process: Arc<str>,
    json: bool,
    inner: tracing_subscriber::fmt::format::Format,
}

impl LineFormat {
    fn plain(process: Arc<str>) -> Self {
        LineFormat {
            process,
            json: false,
            inner: tracing_subscriber::fmt::format::Format::default(),
        }
    }

    fn access(process: Arc<str>, json: bool) -> Self {
        LineFormat {
            json,
            ..LineFormat::plain(process)
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.json {
            return writeln!(writer, "{}", json_record(&self.process, event));
        }
        write!(writer, "[{}] ", self.process)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Fields whose text is a number when present (`-` when absent).
const NUMERIC_TEXT_FIELDS: &[&str] = &["status", "connect_ms"];

/// One access event as a JSON object: `time` (RFC 3339, UTC), `process`,
/// then the record's own fields under their names; an absent value (`-`
/// in the plain line) is `null`.
fn json_record(process: &str, event: &tracing::Event<'_>) -> serde_json::Value {
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut time = String::new();
    let _ = SystemTime.format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut time));
    let mut object = serde_json::Map::new();
    object.insert("time".to_owned(), time.into());
    object.insert("process".to_owned(), process.into());
    let mut visitor = JsonVisitor(&mut object);
    event.record(&mut visitor);
    serde_json::Value::Object(object)
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl JsonVisitor<'_> {
    fn text(&mut self, field: &tracing::field::Field, text: String) {
        let value = if text == "-" {
            serde_json::Value::Null
        } else if NUMERIC_TEXT_FIELDS.contains(&field.name()) {
            text.parse::<u64>()
                .map_or_else(|_| serde_json::Value::String(text), Into::into)
        } else {
            serde_json::Value::String(text)
        };
        self.0.insert(field.name().to_owned(), value);
    }
}

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.text(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here; their Debug is their Display.
        self.text(field, format!("{value:?}"));
    }
}

/// One opened log sink, shared by every event written to it.
#[derive(Clone)]
enum SinkWriter {
    Stdout,
    Stderr,
    File(Arc<Mutex<File>>),
    Udp(Arc<UdpSocket>),
    Tcp(Arc<Mutex<TcpStream>>),
    Unix(Arc<UnixDatagram>),
}

impl SinkWriter {
    fn open(target: &LogTarget) -> io::Result<Self> {
        Ok(match target {
            LogTarget::Stdout => SinkWriter::Stdout,
            LogTarget::Stderr => SinkWriter::Stderr,
            LogTarget::File(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                SinkWriter::File(Arc::new(Mutex::new(file)))
            }
            LogTarget::Udp(addr) => {
                let bind: std::net::SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(bind)?;
                socket.connect(addr)?;
                socket.set_nonblocking(true)?;
                SinkWriter::Udp(Arc::new(socket))
            }
            LogTarget::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
                // A stalled log collector must not stall the proxy.
                stream.set_write_timeout(Some(Duration::from_millis(100)))?;
                SinkWriter::Tcp(Arc::new(Mutex::new(stream)))
            }
            LogTarget::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(path)?;
                socket.set_nonblocking(true)?;
                SinkWriter::Unix(Arc::new(socket))
            }
        })
    }
}

/// The writer handed out per event: fmt writes one formatted event per
/// `write_all`, which becomes one datagram on the datagram sinks.
struct SinkHandle<'a> {
    sink: &'a SinkWriter,
}

impl Write for SinkHandle<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Failures are swallowed on purpose: see the module doc.
        match self.sink {
            SinkWriter::Stdout => {
                let _ = io::stdout().lock().write_all(buf);
            }
            SinkWriter::Stderr => {
                let _ = io::stderr().lock().write_all(buf);
            }
            SinkWriter::File(file) => {
                if let Ok(mut file) = file.lock() {
                    let _ = file.write_all(buf);
                }
            }
            SinkWriter::Udp(socket) => {
                let _ = socket.send(buf);
            }
            SinkWriter::Tcp(stream) => {
                if let Ok(mut stream) = stream.lock() {
                    let _ = stream.write_all(buf);
                }
            }
            SinkWriter::Unix(socket) => {
                let _ = socket.send(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = SinkHandle<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkHandle { sink: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_spellings_round_trip() {
        for text in [
            "stdout",
            "stderr",
            "udp://127.0.0.1:5140",
            "tcp://[::1]:6000",
            "unix:///run/log.sock",
            "file:///var/log/sozu.log",
        ] {
            let parsed = parse_target(text).unwrap();
            assert_eq!(target_to_string(&parsed), text);
        }
    }

    #[test]
    fn unknown_target_is_one_clear_error() {
        let err = parse_target("syslog").unwrap_err().to_string();
        assert!(err.contains("\"syslog\""), "{err}");
    }

    #[test]
    fn udp_sink_sends_one_datagram_per_event() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sink = SinkWriter::open(&LogTarget::Udp(collector.local_addr().unwrap())).unwrap();
        sink.make_writer().write_all(b"first line\n").unwrap();
        sink.make_writer().write_all(b"second line\n").unwrap();
        let mut buf = [0u8; 64];
        let n = collector.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first line\n");
        let n = collector.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"second line\n");
    }

    #[test]
    fn unreachable_sink_never_fails_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.sock");
        let collector = UnixDatagram::bind(&path).unwrap();
        let sink = SinkWriter::open(&LogTarget::Unix(path)).unwrap();
        drop(collector);
        assert!(sink.make_writer().write_all(b"lost\n").is_ok());
    }

    #[test]
    fn file_sink_appends_each_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.txt");
        let sink = SinkWriter::open(&LogTarget::File(path.clone())).unwrap();
        sink.make_writer().write_all(b"one\n").unwrap();
        sink.make_writer().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "one\ntwo\n");
    }
}

//! Log lines to stderr: `TIME reapwatch: level: message`, one line each (messages with
//! newlines are escaped), filtered by `--log-level`. The time is UTC, RFC 3339, to the
//! millisecond: the kubelet's log files are read without their own timestamps too.

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let message = record.args().to_string().replace('\n', "\\n");
            eprintln!(
                "{} reapwatch: {}: {message}",
                humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                record.level().as_str().to_lowercase()
            );
        }
    }

    fn flush(&self) {}
}

pub fn init(level: log::LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    // Only fails if a logger is already set (tests may call this twice).
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

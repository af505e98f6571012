//! Log output: human-readable lines on stderr.

/// Sets up logging at `level`. Safe to call more than once (later calls are
/// ignored).
pub fn init(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// High-resolution, low-overhead Linux performance telemetry.
///
/// `rezolus CONFIG` runs the agent (same as `rezolus agent CONFIG`).
#[derive(Parser)]
#[command(name = "rezolus", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Agent config file, e.g. config/agent.toml
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: collect metrics and serve snapshots over HTTP
    Agent {
        /// Agent config file, e.g. config/agent.toml
        config: PathBuf,
    },
    /// Record the agent's snapshots to a Parquet file
    Record(rezolus::recorder::RecordArgs),
    /// Parquet recordings: summarise, query, recover a capture from its journal
    #[command(subcommand)]
    Parquet(ParquetCommand),
    /// Keep the last minutes of snapshots on disk; SIGHUP writes them to Parquet
    Hindsight {
        /// Hindsight config file, e.g. config/hindsight.toml
        config: PathBuf,
    },
    /// Charts of a recording, of two side by side, or of a live agent, in a browser (or a self-contained HTML report)
    View(rezolus::view::ViewArgs),
    /// Is the agent up: its version, uptime, samplers, snapshot cost and memory; --cost measures its BPF programs
    Status(rezolus::status::StatusArgs),
    /// Serve the agent's metrics to Prometheus (GET /metrics)
    Exporter {
        /// Exporter config file, e.g. config/exporter.toml
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ParquetCommand {
    /// Turn the journal of a capture that was killed into its Parquet file
    Recover {
        /// The journal, e.g. rezolus.parquet.journal
        journal: PathBuf,
        /// The Parquet file to write (default: the journal's name without .journal)
        output: Option<PathBuf>,
        /// Overwrite OUTPUT if it exists
        #[arg(long)]
        force: bool,
    },
    /// What a recording holds: rows, time span, interval, gaps, and each metric with its type, unit and series
    Summary {
        /// The recording, e.g. rezolus.parquet
        file: PathBuf,
    },
    /// One metric over time as a table: counter values or per-second rates, gauge values, histogram percentiles per interval
    Query(rezolus::recording::query::QueryArgs),
}

/// Blocks SIGINT, SIGTERM and SIGHUP before `main` runs at all (from the
/// C runtime's initialisers), so the window in which a signal can take its
/// default action is only the dynamic loader's; `main` then starts the
/// thread that takes them.
extern "C" fn block_signals_before_main() {
    rezolus::signals::block_in_this_thread();
}

#[used]
#[link_section = ".init_array"]
static BLOCK_SIGNALS: extern "C" fn() = block_signals_before_main;

fn main() -> ExitCode {
    // nothing any role runs may gain privileges through execve; set before
    // any thread starts, so that every thread has it
    if let Err(e) = rezolus::privilege::set_no_new_privs() {
        eprintln!("warning: cannot set no_new_privs: {e}");
    }
    // before anything else: no signal may take its default action (SIGHUP's
    // is to terminate) while a role is starting
    rezolus::signals::block();
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Agent { config }), _) | (None, Some(config)) => rezolus::agent::run(&config),
        (Some(Command::Exporter { config }), _) => rezolus::exporter::run(&config),
        (Some(Command::Record(args)), _) => rezolus::recorder::record(args),
        (Some(Command::Hindsight { config }), _) => rezolus::hindsight::run(&config),
        (Some(Command::View(args)), _) => rezolus::view::run(args),
        (Some(Command::Status(args)), _) => match rezolus::status::run(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        (
            Some(Command::Parquet(ParquetCommand::Recover {
                journal,
                output,
                force,
            })),
            _,
        ) => rezolus::recorder::recover(&journal, output.as_deref(), force),
        (Some(Command::Parquet(ParquetCommand::Summary { file })), _) => {
            rezolus::recording::query::summary(&file)
                .and_then(|text| Ok(rezolus::logging::print_all(text.as_bytes())?))
        }
        (Some(Command::Parquet(ParquetCommand::Query(args))), _) => {
            rezolus::recording::query::query(&args)
                .and_then(|text| Ok(rezolus::logging::print_all(text.as_bytes())?))
        }
        (None, None) => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

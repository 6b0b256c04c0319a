//! Thin entry point: parse the command line, set up logging, hand over to the library.

use clap::{CommandFactory, FromArgMatches};
use dynamics_operator::cli::{Cli, Command};
use dynamics_operator::telemetry;

/// Many small, short-lived allocations (a parsed object per watch event and per reply):
/// mimalloc spends less CPU on them than glibc's malloc and keeps a smaller resident set
/// (BENCHMARKS.md, 10,000 objects).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: the crate version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DYNAMICS_GIT_COMMIT"),
    ")"
);

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().version(VERSION).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    runtime_for(&cli.command)?.block_on(run(cli))
}

/// The controller waits on the network nearly all the time (10,000 objects take a fraction of
/// one core): one worker thread serves it, and a second only adds wake-ups between threads,
/// about a fifth more CPU per object (BENCHMARKS.md). `TOKIO_WORKER_THREADS` overrides it; the
/// other commands keep tokio's default of one per core.
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if matches!(command, Command::Run(_)) && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    builder.build()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = match (cli.log_level, &cli.command) {
        (Some(level), _) => level.filter(),
        (None, Command::Run(_) | Command::Sim(_)) => telemetry::SERVICE_FILTER.to_string(),
        (None, _) => telemetry::COMMAND_FILTER.to_string(),
    };
    telemetry::init(cli.log_format, &filter);
    match cli.command {
        Command::Run(args) => {
            // A refused configuration exits 2 (as a usage error does), before Kubernetes is reached.
            let config = args.into_config().unwrap_or_else(|e| config_error(e));
            dynamics_operator::controller::run(config).await
        }
        Command::Sim(args) => {
            let stop = async {
                dynamics_operator::shutdown::signal().await;
            };
            dynamics_operator::sim::run_foreground(args, stop).await
        }
        Command::Crd { ledger } => {
            if ledger {
                print!("{}", dynamics_operator::resource::ledger_crd_yaml());
            } else {
                print!("{}", dynamics_operator::resource::crd_yaml());
            }
            Ok(())
        }
        Command::Resolve(args) => dynamics_operator::controller::resolve(args).await,
        Command::Approve(args) => dynamics_operator::controller::approve(args).await,
        Command::Spend(args) => dynamics_operator::spend::run(args).await,
        Command::Import(args) => {
            let code = dynamics_operator::import::run(args).await;
            std::process::exit(code.unwrap_or_else(|e| config_error(e)))
        }
        Command::Reasons => {
            print!(
                "{}",
                dynamics_operator::reconcile::reasons::troubleshooting_markdown()
            );
            Ok(())
        }
        Command::Plan(args) => {
            let code = dynamics_operator::filemode::run_plan(args).await;
            std::process::exit(code.unwrap_or_else(|e| config_error(e)))
        }
        Command::Apply(args) => {
            let code = dynamics_operator::filemode::run_apply(args).await;
            std::process::exit(code.unwrap_or_else(|e| config_error(e)))
        }
    }
}

/// An error before any work (a flag, a file, the API's address): exit 2, never 1, which `plan`
/// uses for "changes pending" and `apply` for "not every object Ready".
fn config_error(err: anyhow::Error) -> ! {
    eprintln!("error: {err:#}");
    std::process::exit(dynamics_operator::filemode::exit::ERROR)
}

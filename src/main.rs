//! Thin entry point: parse the command line, set up logging, hand over to the library.

use clap::Parser;
use dynamics_operator::cli::{Cli, Command};
use dynamics_operator::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = match cli.command {
        Command::Run(_) | Command::Sim(_) => telemetry::SERVICE_FILTER,
        _ => telemetry::COMMAND_FILTER,
    };
    telemetry::init(cli.log_format, filter);
    match cli.command {
        Command::Run(args) => dynamics_operator::controller::run(args.into_config()?).await,
        Command::Sim(args) => dynamics_operator::sim::run_foreground(args).await,
        Command::Crd => {
            print!("{}", dynamics_operator::resource::crd_yaml());
            Ok(())
        }
        Command::Plan(args) => {
            std::process::exit(dynamics_operator::filemode::run_plan(args).await?)
        }
        Command::Apply(args) => {
            std::process::exit(dynamics_operator::filemode::run_apply(args).await?)
        }
    }
}

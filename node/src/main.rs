//! The `conifer` binary.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use conifer_node::cli::{data, exit, run_certs, Cli, Commands};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line (with its causes), never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    cli.init_logging().map_err(anyhow::Error::msg)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // FAISS runs one OpenMP thread per search: on these machines two threads per search
    // were measured slower than one, and concurrency comes from parallel requests. Set
    // before any FAISS call, when OpenMP reads it.
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        std::env::set_var("OMP_NUM_THREADS", "1");
    }
    // Test builds only: failpoints named in $FAILPOINTS (e.g. `raft::apply::before=panic`).
    // A failpoint's `panic` stands for a crash at that point: the process aborts instead of
    // one task unwinding.
    #[cfg(feature = "failpoints")]
    let _failpoints = {
        if std::env::var_os("FAILPOINTS").is_some() {
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default_hook(info);
                std::process::abort();
            }));
        }
        fail::FailScenario::setup()
    };
    let client = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Commands::Certs(command) => run_certs(command),
        Commands::Policy => {
            print!("{}", conifer_node::policy::permissions_markdown());
            Ok(())
        }
        Commands::Admin(admin) => client()?.block_on(conifer_node::cli::admin::run(admin)),
        Commands::Index(args) => client()?.block_on(data::run_index(args)),
        Commands::Vectors(args) => client()?.block_on(data::run_vectors(args)),
        Commands::Namespace(args) => client()?.block_on(data::run_namespace(args)),
        Commands::Backup(args) => client()?.block_on(conifer_node::cli::backup::run_backup(args)),
        Commands::RestoreJob(args) => {
            client()?.block_on(conifer_node::cli::backup::run_restore_job(args))
        }
        Commands::Collection(args) => {
            client()?.block_on(conifer_node::cli::backup::run_collection(args))
        }
        Commands::Serve(args) => {
            let serve_matches = matches.subcommand_matches("serve").unwrap_or(matches);
            let args = args.with_config_file(serve_matches).map_err(exit::Usage)?;
            if args.print_config {
                print!("{}", args.to_toml().map_err(anyhow::Error::msg)?);
                return Ok(());
            }
            let config = args.into_config().map_err(exit::Usage)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(conifer_node::node::run(config))
        }
    }
}

use clap::Parser as _;
use lqtrace::cli::{Cli, Command};

/// Messages go to stderr as `lqtrace: ...` (warnings and errors say so). Default level `warn`
/// (so aya's warnings show), `-v` gives `info` (hooks, attach steps, timings); `RUST_LOG`
/// overrides both, e.g. `RUST_LOG=lqtrace=debug`.
fn install_logger(verbose: bool) {
    use std::io::Write as _;
    let default = if verbose { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|f, r| match r.level() {
            log::Level::Info => writeln!(f, "lqtrace: {}", r.args()),
            log::Level::Error | log::Level::Warn => {
                writeln!(
                    f,
                    "lqtrace: {}: {}",
                    r.level().as_str().to_lowercase(),
                    r.args()
                )
            }
            _ => writeln!(
                f,
                "lqtrace: {} [{}] {}",
                r.level().as_str().to_lowercase(),
                r.target(),
                r.args()
            ),
        })
        .init();
}

fn main() {
    let cli = Cli::parse();
    install_logger(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lqtrace: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command.clone() {
            None => lqtrace::modes::trace::run(cli).await.map(|()| 0),
            Some(Command::Listeners(args)) => lqtrace::modes::listeners::run(&cli, &args).await,
            Some(Command::Top(args)) => lqtrace::modes::top::run(&cli, &args).await,
            Some(Command::Run(args)) => lqtrace::modes::run::run(&cli, &args).await,
            Some(Command::Demo(args)) => lqtrace::modes::demo::run(&cli, &args).await,
            Some(Command::Check) => lqtrace::modes::check::run(&cli),
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line: the error and its causes.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("lqtrace: {}", msg.join(": "));
            std::process::exit(2);
        }
    }
}

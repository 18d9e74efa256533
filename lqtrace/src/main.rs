use clap::Parser as _;

fn main() {
    let cli = lqtrace::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lqtrace: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    match runtime.block_on(lqtrace::trace::run(cli)) {
        Ok(()) => {}
        Err(e) => {
            // One line: the error and its causes.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("lqtrace: {}", msg.join(": "));
            std::process::exit(2);
        }
    }
}

use clap::Parser;

fn main() {
    // A panic is a bug. On a core thread it would leave the other cores
    // waiting for chunks that never come, and the process would hang: end it
    // instead. The journal is written line by line and partial files stay,
    // so rerunning the same command resumes.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report_panic(info);
        eprintln!(
            "ringdown: internal error (a bug; please report the lines above): aborting. \
             Rerunning the same command resumes from the journal."
        );
        std::process::abort();
    }));
    let cli = ringdown::cli::Cli::parse();
    let code = match ringdown::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringdown: error: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}

use clap::Parser;

fn main() {
    // A panic is a bug. The library ends such a run with an error (the
    // engine aborts what the dead task held, `scheduler::Core::spawn`), and
    // removes partial files as after any fatal error; the CLI stops at once
    // instead, keeping them: the journal is written line by line, so
    // rerunning the same command resumes.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report_panic(info);
        ringdown::say!(
            "ringdown: internal error (a bug; please report the lines above): aborting. \
             Rerunning the same command resumes from the journal."
        );
        std::process::abort();
    }));
    let cli = ringdown::cli::Cli::parse();
    let code = match ringdown::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            ringdown::say!("ringdown: error: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}

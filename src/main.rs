use clap::Parser;

fn main() {
    // The command runs on a thread whose stack size we choose: the main
    // thread's is RLIMIT_STACK, and at 64 KiB parsing and the control plane
    // overflowed it (a bare SIGSEGV, or an abort). Spawning fails only when
    // threads cannot be made at all, where the cores could not start either.
    let command = std::thread::Builder::new()
        .name("ringdown-main".into())
        .stack_size(ringdown::config::COMMAND_STACK_BYTES)
        .spawn(run_command);
    let code = match command {
        Ok(command) => command.join().unwrap_or(ringdown::error::exit_code::FAILED),
        Err(error) => {
            ringdown::say!(
                "ringdown: error: cannot start a thread ({error}): raise the process or thread limit (ulimit -u, pids.max)"
            );
            ringdown::error::exit_code::FAILED
        }
    };
    std::process::exit(code);
}

fn run_command() -> i32 {
    let cli = ringdown::cli::Cli::parse();
    // A panic is a bug. The library ends such a run with an error (the
    // engine aborts what the dead task held, `scheduler::Core::spawn`), and
    // removes partial files as after any fatal error; the CLI stops at once
    // instead (exit 134), keeping them: journals are written line by line.
    let after_a_bug = cli.command.after_a_bug();
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report_panic(info);
        ringdown::say!(
            "ringdown: internal error (a bug; please report the lines above): aborting. {after_a_bug}"
        );
        std::process::abort();
    }));
    match ringdown::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            ringdown::say!("ringdown: error: {error}");
            error.exit_code()
        }
    }
}

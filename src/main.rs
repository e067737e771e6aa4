use clap::Parser;

fn main() {
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

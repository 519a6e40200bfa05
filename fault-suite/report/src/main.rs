//! `logpipe-fault-report DIR`: the fault suite's report (see the library and `fault-suite/run.sh`).

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: logpipe-fault-report DIR (the folder the fault scenarios wrote)");
        return std::process::ExitCode::from(2);
    };
    match logpipe_fault_report::write(std::path::Path::new(&dir)) {
        Ok((table, passed)) => {
            print!("{table}");
            if passed {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("fault report failed: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

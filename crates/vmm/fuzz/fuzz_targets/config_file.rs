//! The config-file parser: arbitrary text as TOML and as JSON through
//! `skerry_vmm::cli::parse_config` (keys → flags → the command-line parser), then what
//! `run_vm` does with the result before it touches KVM. Nothing may panic; errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skerry_vmm::cli::{parse_config, Command, ConfigFormat};
use skerry_vmm_fuzz::exercise_config;

fuzz_target!(|text: &str| {
    for format in [ConfigFormat::Toml, ConfigFormat::Json] {
        match parse_config(text, format) {
            Ok(Command::Run(config)) => exercise_config(&config),
            Ok(Command::SeccompSummary) => unreachable!("seccomp-summary is refused in files"),
            // Rendering the error (what `exit` prints) must not panic either.
            Err(e) => {
                let _ = e.render().to_string();
            }
        }
    }
});

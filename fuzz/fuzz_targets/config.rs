//! The configuration parser on any environment: never a panic, and every
//! refusal one line naming a variable the page documents, as
//! docs/configuration.md promises.
//!
//! The input is entries separated by NUL bytes; an entry's first byte picks
//! the variable from the documented ones (or, past their number, the rest of
//! the entry up to `=` is the name), so that most inputs reach the checks of
//! real variables rather than envy's "unknown variable is ignored".
#![no_main]

use libfuzzer_sys::fuzz_target;
use read_api::config::Settings;

const PAGE: &str = include_str!("../../docs/configuration.md");

fn documented() -> Vec<&'static str> {
    PAGE.lines()
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let names = documented();
    let text = String::from_utf8_lossy(data);
    let mut vars = Vec::new();
    for entry in text.split('\0') {
        let mut chars = entry.chars();
        let Some(first) = chars.next() else { continue };
        let rest = chars.as_str();
        match names.get(first as usize % (names.len() + 1)) {
            Some(name) => vars.push((name.to_string(), rest.to_owned())),
            None => {
                let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
                vars.push((name.to_owned(), value.to_owned()));
            }
        }
    }
    // The one file the parser reads: its text from the input too.
    let file = vars
        .iter()
        .find(|(name, _)| name == "FUZZ_FILE")
        .map(|(_, text)| text.clone());
    let read = move |_: &str| {
        file.clone()
            .ok_or_else(|| std::io::Error::other("no such file"))
    };
    match Settings::parse(vars, &read) {
        Ok(settings) => {
            assert!(settings.workers >= 1 && settings.max_key_bytes >= 1);
            assert!(
                settings.listen_addr != settings.admin_addr || settings.listen_addr.port() == 0
            );
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains(['\n', '\r']), "{line:?}");
            assert!(
                e.variable == "environment" || names.contains(&e.variable),
                "{} is not in docs/configuration.md",
                e.variable
            );
        }
    }
});

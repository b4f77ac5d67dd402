//! The configuration table (docs/configuration.md) is what the code does: every
//! variable the code reads is in it, and every default it states is the one
//! `Settings` takes when the environment is empty.

use std::path::Path;

use read_api::config::{AdmissionMode, LogFormat, Settings};

const DOC: &str = include_str!("../../../docs/configuration.md");
const CONFIG_SOURCE: &str = include_str!("../../src/config.rs");

/// `(variable, default cell)` for each row of the page's table.
fn documented_rows() -> Vec<(String, String)> {
    DOC.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_owned(),
                cells[2].trim_matches('`').to_owned(),
            )
        })
        .collect()
}

/// The variables the code reads: the fields of `RawSettings`, upper-cased.
fn variables_in_code() -> Vec<String> {
    let body = CONFIG_SOURCE
        .split("struct RawSettings {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("config.rs declares RawSettings");
    body.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(field, _)| field.trim().to_uppercase())
        .collect()
}

/// What the default cell must say for each variable, from `Settings` itself.
fn default_in_code(settings: &Settings, variable: &str) -> String {
    let seconds = |d: std::time::Duration| d.as_secs().to_string();
    let millis = |d: std::time::Duration| d.as_millis().to_string();
    match variable {
        "REDIS_URL" => settings.redis.url.clone(),
        "REDIS_PASSWORD_FILE" => optional(settings.redis.password.as_ref().map(|_| "set")),
        "REDIS_CA_FILE" => optional(settings.redis_ca_file.as_deref().map(Path::display)),
        "REDIS_POOL_SIZE" => settings.redis_pool_size.to_string(),
        "REDIS_TIMEOUT_MS" => millis(settings.redis_timeout),
        "LISTEN_ADDR" => settings.listen_addr.to_string(),
        "ADMIN_ADDR" => settings.admin_addr.to_string(),
        "WORKERS" => {
            assert_eq!(
                settings.workers,
                std::thread::available_parallelism().unwrap().get()
            );
            "CPUs available".to_owned()
        }
        "MAX_KEY_BYTES" => settings.max_key_bytes.to_string(),
        "MAX_BATCH_KEYS" => settings.max_batch_keys.to_string(),
        "MAX_HASH_FIELDS" => settings.max_hash_fields.to_string(),
        "KEY_PREFIX" if settings.key_prefix.is_empty() => "empty".to_owned(),
        "KEY_PREFIX" => settings.key_prefix.clone(),
        "LOG_FORMAT" => match settings.log_format {
            LogFormat::Json => "json".to_owned(),
            LogFormat::Text => "text".to_owned(),
        },
        "SHUTDOWN_DELAY_SECONDS" => seconds(settings.shutdown_delay),
        "SHUTDOWN_GRACE_SECONDS" => seconds(settings.shutdown_grace),
        "MAX_VALUE_BYTES" => settings.max_value_bytes.to_string(),
        "MAX_BATCH_RESPONSE_BYTES" => settings.max_batch_response_bytes.to_string(),
        "CACHE_CONTROL" => optional(settings.cache_control.as_ref()),
        "HEARTBEAT_KEY" => optional(settings.heartbeat_key.as_ref()),
        "READY_MAX_LINK_DOWN_SECONDS" => settings
            .ready_max_link_down
            .map_or_else(|| "unset".to_owned(), seconds),
        "REPLICA_POLL_MS" => millis(settings.replica_poll),
        "CACHE_MAX_BYTES" => settings.cache_max_bytes.to_string(),
        "CACHE_MAX_VALUE_BYTES" => settings.cache_max_value_bytes.to_string(),
        "ADMISSION" => match settings.admission.mode {
            AdmissionMode::Adaptive => "adaptive".to_owned(),
            AdmissionMode::Fixed => "fixed".to_owned(),
            AdmissionMode::Off => "off".to_owned(),
        },
        "ADMISSION_MAX_IN_FLIGHT" => settings.admission.max_in_flight.to_string(),
        "ADMISSION_MIN_IN_FLIGHT" => settings.admission.min_in_flight.to_string(),
        "ADMISSION_QUEUE_MS" => millis(settings.admission.queue),
        "ADMISSION_MAX_CONNECTIONS" => settings.admission.max_connections.to_string(),
        "POSITION_MAX_WAIT_MS" => millis(settings.position_max_wait),
        "WATCH_MAX_WATCHERS" => settings.watch.max_watchers.to_string(),
        "WATCH_MAX_KEYS" => settings.watch.max_keys.to_string(),
        "WATCH_HEARTBEAT_SECONDS" => seconds(settings.watch.heartbeat),
        "WATCH_HISTORY" => settings.watch.history.to_string(),
        other => panic!(
            "docs/configuration.md documents {other}, which this test does not know: add it here"
        ),
    }
}

fn optional(value: Option<impl std::fmt::Display>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

#[test]
fn the_configuration_table_lists_every_variable_the_code_reads() {
    let documented: Vec<String> = documented_rows()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let read = variables_in_code();
    assert!(read.len() > 10, "found only {read:?} in RawSettings");
    assert_eq!(
        documented, read,
        "docs/configuration.md's table against RawSettings, in order"
    );
}

#[test]
fn the_configuration_table_states_the_defaults_the_code_takes() {
    let settings = Settings::from_vars(Vec::<(String, String)>::new()).expect("defaults are valid");
    for (variable, documented) in documented_rows() {
        assert_eq!(
            documented,
            default_in_code(&settings, &variable),
            "docs/configuration.md's default for {variable}"
        );
    }
}

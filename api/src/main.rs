use std::process::ExitCode;

use read_api::{
    config::Settings,
    startup::{shutdown_signal, Application},
    telemetry,
};

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("read-api: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Request work runs on the HTTP workers' own threads; this runtime
        // only hosts the replica monitor, the tracking connection, the admin
        // server and signals.
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("read-api: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match Application::build(&settings) {
            Ok(app) => app,
            Err(e) => {
                eprintln!("read-api: {e}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(
            listen = %app.public_addr(),
            admin = %app.admin_addr(),
            redis = %settings.redis,
            workers = settings.workers,
            pool_size = settings.redis_pool_size,
            "serving"
        );
        match app.run_until(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "exiting");
                ExitCode::FAILURE
            }
        }
    })
}

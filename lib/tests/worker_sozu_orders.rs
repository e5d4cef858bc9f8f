//! A worker's answers to Sōzu 2.1's `Logging` and `configure_metrics`, and
//! to the Sōzu orders it does not serve.

mod worker_common;

use std::sync::{Arc, Mutex};

use sozu_command_lib::command::{
    request::RequestType, MetricsConfiguration, ResponseStatus, SetHealthCheck,
};
use sozu_lib::server::{LogLevelHook, ServerConfig};
use worker_common::*;

#[test]
fn logging_goes_through_the_hook_and_its_refusal_is_named() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = seen.clone();
    let mut worker = Worker::start_with(ServerConfig {
        log_level: Some(LogLevelHook::new(move |directives| {
            if directives.contains("bogus") {
                return Err("not a level".to_owned());
            }
            recorder.lock().unwrap().push(directives.to_owned());
            Ok(())
        })),
        ..ServerConfig::default()
    });
    worker.ok(RequestType::Logging("debug".to_owned()));
    assert_eq!(*seen.lock().unwrap(), ["debug"]);
    let refused = worker.order(RequestType::Logging("bogus".to_owned()));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(refused.message.contains("bogus"), "{refused:?}");
    assert!(refused.message.contains("not a level"), "{refused:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn logging_without_a_hook_is_refused() {
    let mut worker = Worker::start();
    let refused = worker.order(RequestType::Logging("debug".to_owned()));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(refused.message.contains("logging"), "{refused:?}");
}

#[test]
fn configure_metrics_is_answered_and_a_bad_value_named() {
    let mut worker = Worker::start();
    for value in [
        MetricsConfiguration::Disabled,
        MetricsConfiguration::Clear,
        MetricsConfiguration::Enabled,
    ] {
        let answer = worker.order(RequestType::ConfigureMetrics(value as i32));
        assert_eq!(answer.status, ResponseStatus::Ok as i32, "{answer:?}");
        assert_eq!(answer.message, value.as_str_name());
    }
    let refused = worker.order(RequestType::ConfigureMetrics(5));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(refused.message.contains("configure_metrics"), "{refused:?}");
    assert!(refused.message.contains('5'), "{refused:?}");
}

#[test]
fn sozu_orders_a_worker_does_not_serve_are_refused_by_name() {
    let mut worker = Worker::start();
    let refused = worker.order(RequestType::SetHealthCheck(SetHealthCheck {
        cluster_id: "c".to_owned(),
        config: Default::default(),
    }));
    assert_eq!(refused.status, ResponseStatus::Failure as i32);
    assert!(refused.message.contains("set_health_check"), "{refused:?}");
    // The worker still serves.
    worker.ok(RequestType::Status(Default::default()));
}

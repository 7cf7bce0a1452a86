use super::*;
use serde_json::json;

fn env() -> Environment {
    Environment {
        home: Some(PathBuf::from("/home/u")),
        cores: 3,
    }
}

fn parse(v: Value) -> Result<ServeConfig, ConfigError> {
    ServeConfig::from_value(&v, &env())
}

fn err(v: Value) -> String {
    parse(v).unwrap_err().to_string()
}

#[test]
fn defaults() {
    let c = parse(json!({})).unwrap();
    assert_eq!(c.local_build_root, PathBuf::from("/home/u/.cache/jserve"));
    assert_eq!(c.remote_service, RemoteServiceConfig::default());
    assert_eq!(c.remote_service.interface, "127.0.0.1");
    assert_eq!(c.jobs, 3);
    assert_eq!(c.build.build_jobs, 3);
    assert_eq!(c.build.action_timeout, Duration::from_secs(300));
    assert_eq!(c.build.local_launcher, vec!["env", "--"]);
    assert_eq!(
        c.build.target_cache_write_strategy,
        TargetCacheWriteStrategy::Sync
    );
    assert_eq!(c.retry, RetryConfig::default());
    assert!(c.execution_endpoint.is_none());
    assert!(c.is_own_endpoint());
    assert_eq!(c.hash_function(), HashFunction::GitSha1);
    assert!(c.warnings.is_empty());
}

#[test]
fn every_key() {
    let c = parse(json!({
        "local build root": {"root": "system", "path": "var/jserve/../jserve-root"},
        "repositories": [{"root": "home", "path": "repos/a"}, {"root": "system", "path": "/srv/b", "base": "."}],
        "logging": {"files": [{"root": "home", "path": "log/serve"}], "limit": 4.6,
                    "restrict stderr limit": 9, "plain": true, "append": true},
        "authentication": {"ca cert": {"root": "system", "path": "etc/ca.crt"},
                           "client cert": {"root": "system", "path": "etc/c.crt"},
                           "client key": {"root": "system", "path": "etc/c.key"}},
        "remote service": {"interface": "0.0.0.0", "port": 9999,
                           "pid file": {"root": "system", "path": "run/j.pid"},
                           "info file": {"root": "home", "path": "info.json"},
                           "server cert": {"root": "system", "path": "etc/s.crt"},
                           "server key": {"root": "system", "path": "etc/s.key"}},
        "execution endpoint": {"address": "re.example:8980", "instance name": "main",
                               "client address": "[::1]:8981", "compatible": true,
                               "shared cache": true},
        "max-attempts": 10, "initial-backoff-seconds": 2, "max-backoff-seconds": 30.5,
        "jobs": 8,
        "build": {"build jobs": 64, "local jobs": 100, "action timeout": 12.5,
                  "target-cache write strategy": "split", "local launcher": ["nice", "env", "--"]},
        "archive limits": {"max bytes": 1000000, "max entries": 50, "max memory": 268435456, "compression": 6}
    }))
    .unwrap();
    assert_eq!(c.local_build_root, PathBuf::from("/var/jserve-root"));
    assert_eq!(
        c.repositories,
        vec![PathBuf::from("/home/u/repos/a"), PathBuf::from("/srv/b")]
    );
    assert_eq!(c.logging.files, vec![PathBuf::from("/home/u/log/serve")]);
    assert_eq!(c.logging.limit, Some(5));
    assert_eq!(c.logging.restrict_stderr_limit, Some(6));
    assert!(c.logging.plain && c.logging.append);
    assert_eq!(c.authentication.ca_cert, Some(PathBuf::from("/etc/ca.crt")));
    assert_eq!(
        c.authentication.client_key,
        Some(PathBuf::from("/etc/c.key"))
    );
    assert_eq!(c.remote_service.interface, "0.0.0.0");
    assert_eq!(c.remote_service.port, 9999);
    assert_eq!(c.remote_service.pid_file, Some(PathBuf::from("/run/j.pid")));
    assert_eq!(
        c.remote_service.info_file,
        Some(PathBuf::from("/home/u/info.json"))
    );
    assert_eq!(
        c.remote_service.server_cert,
        Some(PathBuf::from("/etc/s.crt"))
    );
    let e = c.execution_endpoint.clone().unwrap();
    assert_eq!(e.address.unwrap().to_string(), "re.example:8980");
    assert_eq!(e.client_address.unwrap().to_string(), "[::1]:8981");
    assert_eq!(e.instance_name, "main");
    assert!(!c.is_own_endpoint());
    assert!(c.shared_cache());
    assert_eq!(c.hash_function(), HashFunction::Sha256);
    assert_eq!(c.retry.max_attempts, 10);
    assert_eq!(c.retry.initial_backoff, Duration::from_secs(2));
    assert_eq!(c.retry.max_backoff, Duration::from_secs_f64(30.5));
    assert_eq!(c.jobs, 8);
    assert_eq!(c.build.build_jobs, 64);
    assert_eq!(c.build.local_jobs, 100);
    assert_eq!(c.build.action_timeout, Duration::from_secs_f64(12.5));
    assert_eq!(
        c.build.target_cache_write_strategy,
        TargetCacheWriteStrategy::Split
    );
    assert_eq!(c.build.local_launcher, vec!["nice", "env", "--"]);
    assert_eq!(
        c.archive_limits,
        ArchiveLimits {
            max_bytes: 1_000_000,
            max_entries: 50,
            max_memory: 256 << 20,
            compression: 6,
        }
    );
    // The missing repository directories are warned about.
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
}

#[test]
fn compatible_without_address_is_own_compatible_endpoint() {
    let c = parse(json!({"execution endpoint": {"compatible": true}})).unwrap();
    assert!(c.is_own_endpoint());
    assert_eq!(c.hash_function(), HashFunction::Sha256);
}

#[test]
fn a_shared_cache_needs_an_external_endpoint() {
    let e = err(json!({"execution endpoint": {"shared cache": true}}));
    assert!(
        e.contains("\"shared cache\"") && e.contains("external endpoint"),
        "{e}"
    );
    let c = parse(json!({"execution endpoint": {"address": "re:1", "shared cache": false}}));
    assert!(!c.unwrap().shared_cache());
    assert!(!parse(json!({})).unwrap().shared_cache());
}

#[test]
fn build_jobs_default_to_jobs_and_null_means_default() {
    let c = parse(json!({"jobs": 5, "build": {"local launcher": null}, "logging": null})).unwrap();
    assert_eq!(c.build.build_jobs, 5);
    assert_eq!(c.build.local_launcher, vec!["env", "--"]);
}

#[test]
fn unknown_keys_warn() {
    let c = parse(json!({"colour": 1, "build": {"speed": "fast"}})).unwrap();
    assert_eq!(c.warnings.len(), 2);
    assert!(c.warnings.iter().any(|w| w.contains("\"colour\"")));
    assert!(c.warnings.iter().any(|w| w.contains("\"build\".\"speed\"")));
}

#[test]
fn retry_keys_without_endpoint_warn() {
    let c = parse(json!({"max-attempts": 3})).unwrap();
    assert_eq!(c.retry, RetryConfig::default());
    assert_eq!(c.warnings.len(), 1);
}

#[test]
fn wrong_types_name_the_key() {
    let cases = [
        (json!([]), "(top level): expected an object"),
        (
            json!({"local build root": "x"}),
            "\"local build root\": expected an object",
        ),
        (
            json!({"local build root": {"root": "home"}}),
            "\"local build root\".\"path\": missing",
        ),
        (
            json!({"local build root": {"path": "x"}}),
            "\"local build root\".\"root\": missing",
        ),
        (
            json!({"local build root": {"root": "moon", "path": "x"}}),
            "unknown root \"moon\"",
        ),
        (
            json!({"local build root": {"root": "workspace", "path": "x"}}),
            "\"workspace\"",
        ),
        (
            json!({"repositories": {}}),
            "\"repositories\": expected a list",
        ),
        (
            json!({"repositories": [{"root": "home", "path": 3}]}),
            "\"repositories\"[0].\"path\": expected a string",
        ),
        (json!({"logging": []}), "\"logging\": expected an object"),
        (
            json!({"logging": {"files": "f"}}),
            "\"logging\".\"files\": expected a list",
        ),
        (
            json!({"logging": {"limit": "high"}}),
            "\"logging\".\"limit\": expected a number",
        ),
        (
            json!({"logging": {"restrict stderr limit": true}}),
            "\"restrict stderr limit\": expected a number",
        ),
        (
            json!({"logging": {"plain": 1}}),
            "\"logging\".\"plain\": expected a flag",
        ),
        (
            json!({"logging": {"append": "yes"}}),
            "\"logging\".\"append\": expected a flag",
        ),
        (
            json!({"authentication": {"ca cert": "x"}}),
            "\"authentication\".\"ca cert\": expected an object",
        ),
        (
            json!({"authentication": {"client cert": {"root": "system", "path": "c"}}}),
            "must be given together",
        ),
        (
            json!({"remote service": {"interface": 1}}),
            "\"remote service\".\"interface\": expected a string",
        ),
        (
            json!({"remote service": {"port": "80"}}),
            "\"remote service\".\"port\": expected a number",
        ),
        (
            json!({"remote service": {"port": 70000}}),
            "\"remote service\".\"port\": 70000 is out of range",
        ),
        (
            json!({"remote service": {"port": 1.5}}),
            "expected a whole number",
        ),
        (
            json!({"remote service": {"pid file": []}}),
            "\"pid file\": expected an object",
        ),
        (
            json!({"remote service": {"info file": 1}}),
            "\"info file\": expected an object",
        ),
        (
            json!({"remote service": {"server key": {"root": "system", "path": "k"}}}),
            "must be given together",
        ),
        (
            json!({"execution endpoint": {"address": "nocolon"}}),
            "\"execution endpoint\".\"address\": \"nocolon\" is not of the form",
        ),
        (
            json!({"execution endpoint": {"address": "h:99999"}}),
            "no valid port",
        ),
        (
            json!({"execution endpoint": {"client address": 5}}),
            "\"client address\": expected a string",
        ),
        (
            json!({"execution endpoint": {"instance name": []}}),
            "\"instance name\": expected a string",
        ),
        (
            json!({"execution endpoint": {"compatible": "true"}}),
            "\"compatible\": expected a flag",
        ),
        (
            json!({"execution endpoint": {}, "max-attempts": "3"}),
            "\"max-attempts\": expected a number",
        ),
        (
            json!({"execution endpoint": {}, "max-attempts": 0}),
            "\"max-attempts\": 0 is out of range",
        ),
        (
            json!({"execution endpoint": {}, "initial-backoff-seconds": -1}),
            "\"initial-backoff-seconds\": expected zero or more",
        ),
        (
            json!({"execution endpoint": {}, "max-backoff-seconds": {}}),
            "\"max-backoff-seconds\": expected a number",
        ),
        (json!({"jobs": 0}), "\"jobs\": 0 is out of range"),
        (json!({"jobs": "4"}), "\"jobs\": expected a number"),
        (json!({"build": 1}), "\"build\": expected an object"),
        (
            json!({"build": {"build jobs": -2}}),
            "\"build\".\"build jobs\": -2 is out of range",
        ),
        (
            json!({"build": {"action timeout": 0}}),
            "\"action timeout\": expected more than zero",
        ),
        (
            json!({"build": {"target-cache write strategy": "fast"}}),
            "unknown value \"fast\"",
        ),
        (
            json!({"build": {"local launcher": "env"}}),
            "\"local launcher\": expected a list",
        ),
        (
            json!({"build": {"local launcher": []}}),
            "must name at least",
        ),
        (
            json!({"build": {"local launcher": ["env", 1]}}),
            "\"local launcher\"[1]: expected a string",
        ),
        (
            json!({"archive limits": {"max bytes": 0}}),
            "\"archive limits\".\"max bytes\": 0 is out of range",
        ),
        (
            json!({"archive limits": {"max entries": "many"}}),
            "\"max entries\": expected a number",
        ),
    ];
    for (value, expected) in cases {
        let message = err(value.clone());
        assert!(
            message.contains(expected),
            "{value}: {message:?} lacks {expected:?}"
        );
    }
}

#[test]
fn relative_build_root_rejected_and_missing_home_reported() {
    let no_home = Environment {
        home: None,
        cores: 1,
    };
    let e = ServeConfig::from_value(&json!({}), &no_home)
        .unwrap_err()
        .to_string();
    assert!(e.contains("HOME"), "{e}");
    let e = ServeConfig::from_value(
        &json!({"local build root": {"root": "home", "path": "x"}}),
        &no_home,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("HOME"), "{e}");
}

#[test]
fn load_reports_unreadable_and_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    assert!(matches!(
        ServeConfig::load(&missing, &env()),
        Err(ConfigError::Read { .. })
    ));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"jobs\": ").unwrap();
    assert!(matches!(
        ServeConfig::load(&bad, &env()),
        Err(ConfigError::Parse { .. })
    ));
    let good = dir.path().join("good.json");
    std::fs::write(&good, "{\"jobs\": 2}").unwrap();
    assert_eq!(ServeConfig::load(&good, &env()).unwrap().jobs, 2);
}

#[test]
fn addresses() {
    assert_eq!(
        Address::parse("localhost:80").unwrap().to_string(),
        "localhost:80"
    );
    assert_eq!(Address::parse("[::1]:80").unwrap().host, "::1");
    assert!(Address::parse(":80").is_err());
    assert!(Address::parse("host:").is_err());
    assert!(Address::parse("[::1]80").is_err());
}

#[test]
fn gc_section() {
    let c = parse(json!({"gc": {"max bytes": 5_000_000}})).unwrap();
    let gc = c.gc.unwrap();
    assert_eq!(gc.max_bytes, 5_000_000);
    assert_eq!(gc.interval, DEFAULT_GC_INTERVAL);
    assert_eq!(gc.min_age, DEFAULT_GC_MIN_AGE);
    let c = parse(json!({"gc": {"max bytes": 7, "interval seconds": 0.5, "min age seconds": 0}}))
        .unwrap();
    let gc = c.gc.unwrap();
    assert_eq!(
        (gc.interval, gc.min_age),
        (Duration::from_millis(500), Duration::ZERO)
    );
    assert!(parse(json!({})).unwrap().gc.is_none());
    for bad in [
        json!({"gc": {}}),
        json!({"gc": {"max bytes": 0}}),
        json!({"gc": {"max bytes": 1, "interval seconds": 0}}),
        json!({"gc": {"max bytes": "1"}}),
    ] {
        let e = parse(bad.clone()).unwrap_err().to_string();
        assert!(e.contains("\"gc\""), "{bad}: {e}");
    }
}

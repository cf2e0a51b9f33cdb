//! The configuration's loading, overrides and validation.

use super::*;

#[test]
fn the_example_file_holds_every_key_with_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
    let table: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let example = Config::from_table(table.clone()).unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    assert_eq!(toml::Table::try_from(example).unwrap(), defaults, "the example's values are the defaults");
    for (section, keys) in &defaults {
        let Some(keys) = keys.as_table() else { continue };
        for key in keys.keys() {
            let listed = table.get(section).and_then(|s| s.get(key)).is_some();
            assert!(listed, "deploy/config.example.toml lacks {section}.{key}");
        }
    }
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load_with_env(Some(&path), env)
}

#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.auth.timestamp_window_secs, 300);
    assert_eq!(c.storage.part_size, 8 * MIB);
    assert!(c.state.redis_url.is_none());
}

#[test]
fn environment_overrides_the_file() {
    let c = load(
        "[server]\nlisten = \"127.0.0.1:1\"\n",
        &[
            ("UPLOAD_RECEIVER__SERVER__LISTEN", "0.0.0.0:9000"),
            ("UPLOAD_RECEIVER__SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
            ("UPLOAD_RECEIVER__SITE__SITE_ID", "4242"),
            ("UPLOAD_RECEIVER__SITE__SITE_NAME", "2024"),
            ("UPLOAD_RECEIVER__SERVER__HEADER_READ_TIMEOUT_SECS", "7"),
            ("UPLOAD_RECEIVER__DATA_DIR", "/var/lib/ur"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:9000");
    assert_eq!(c.server.trusted_proxies, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    assert_eq!(c.site.site_id, "4242");
    assert_eq!(c.site.site_name, "2024");
    assert_eq!(c.server.header_read_timeout_secs, 7);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/ur"));
}

#[test]
fn trusted_proxies_take_cidrs_and_bare_addresses() {
    let c = load("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\"]\n", &[]).unwrap();
    let hosts: Vec<String> = c.server.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
    let err = load("[server]\ntrusted_proxies = [\"nope\"]\n", &[]).unwrap_err().to_string();
    assert!(err.contains("server.trusted_proxies"), "{err}");
}

#[test]
fn an_unknown_key_is_named_in_the_error() {
    let err = load("[server]\nlisen = \"x\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("server") && err.contains("lisen"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_is_named_in_the_error() {
    let err = load("[server]\nheader_read_timeout_secs = \"ten\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("server.header_read_timeout_secs"), "{err}");
}

#[test]
fn validation_names_the_bad_key() {
    for (text, key) in [
        ("[server]\nlisten = \"nope\"\n", "server.listen"),
        ("[storage]\npart_size = 1024\n", "storage.part_size"),
        ("[server]\nbody_idle_timeout_secs = 0\n", "server.body_idle_timeout_secs"),
        ("[callback]\nallowed_hosts = [\"a b\"]\n", "callback.allowed_hosts[0]"),
        ("[webhook]\nurl = \"https://hooks.example.com/upload\"\n", "webhook.url"),
        ("[webhook]\nurl = \"ftp://hooks.example.com/\"\nsecret = \"0123456789abcdef\"\n", "webhook.url"),
        ("[webhook]\nsecret = \"short\"\n", "webhook.secret"),
        ("[callback]\nsigning_secrets = [\"0123456789abcdef\", \"short\"]\n", "callback.signing_secrets[1]"),
        (
            "[[credentials]]\nconsumer_key = \"\"\nconsumer_secret = \"s\"\naccess_token = \"t\"\naccess_token_secret = \"u\"\npermission = \"write\"\n",
            "credentials[0].consumer_key",
        ),
    ] {
        let err = load(text, &[]).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn an_unknown_permission_is_refused() {
    let text = "[[credentials]]\nconsumer_key = \"k\"\nconsumer_secret = \"s\"\naccess_token = \"t\"\naccess_token_secret = \"u\"\npermission = \"root\"\n";
    let err = load(text, &[]).unwrap_err().to_string();
    assert!(err.contains("credentials[0].permission"), "{err}");
}

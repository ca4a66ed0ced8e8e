//! TLS to Postgres and Redis (src/tls.rs), against bin/test's TLS mode, where both accept TLS
//! only and ask for a client certificate of the CA made there: the URL's parameters are enough
//! to connect, and a client without TLS, without the CA or without a certificate is refused.
//! (In the plain mode there is nothing to refuse: these tests say so and pass.)

use crate::helpers::{connect, env, redis_client};

/// The URL with `key` set to `value`, or removed (`None`).
fn set(url: &str, key: &str, value: Option<&str>) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let kept: Vec<(String, String)> = url.query_pairs().into_owned().filter(|(k, _)| k != key).collect();
    let mut query = url.query_pairs_mut();
    query.clear().extend_pairs(kept);
    if let Some(value) = value {
        query.append_pair(key, value);
    }
    drop(query);
    url.to_string()
}

fn tls_mode() -> bool {
    let on = std::env::var("BOTFLEET_TEST_MODE").as_deref() == Ok("tls");
    if !on {
        eprintln!("not in bin/test's TLS mode: nothing to refuse");
    }
    on
}

async fn postgres_error(url: &str) -> String {
    match botfleet::store::connect(url).await {
        Ok(_) => panic!("connected with {url}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn postgres_takes_tls_clients_with_a_certificate_only() {
    if !tls_mode() {
        return;
    }
    let url = env("BOTFLEET_TEST_PRIMARY_URL");
    let ssl: bool = connect(&url)
        .await
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session must be encrypted");
    // libpq's `require` encrypts without checking the server: it connects.
    connect(&set(&set(&url, "sslrootcert", None), "sslmode", Some("require"))).await;

    let plain = postgres_error(&set(&url, "sslmode", Some("disable"))).await;
    assert!(plain.contains("no encryption"), "a client without TLS: {plain}");
    let no_ca = postgres_error(&set(&url, "sslrootcert", None)).await;
    assert!(no_ca.contains("UnknownIssuer"), "a client that trusts only the system's CAs: {no_ca}");
    let no_cert = postgres_error(&set(&set(&url, "sslcert", None), "sslkey", None)).await;
    assert!(no_cert.contains("certificate"), "a client without a certificate: {no_cert}");
}

async fn redis_error(url: &str) -> String {
    let result = async {
        let mut conn = redis_client(url).connect(std::time::Duration::from_secs(5)).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match result.await {
        Ok(_) => panic!("connected with {url}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn redis_takes_tls_clients_with_a_certificate_only() {
    if !tls_mode() {
        return;
    }
    use redis::AsyncCommands;
    let url = env("BOTFLEET_TEST_REDIS_URL");
    let mut conn = redis_client(&url).connect(std::time::Duration::from_secs(5)).await.unwrap();
    let () = conn.set("tls:probe", "over tls").await.unwrap();

    let plain = url::Url::parse(&url).unwrap();
    let plain = format!("redis://{}:{}", plain.host_str().unwrap(), plain.port().unwrap());
    let refused = redis_error(&plain).await;
    assert!(refused.contains("reset by peer"), "a client without TLS: {refused}");
    let no_ca = redis_error(&set(&url, "ssl_ca_certs", None)).await;
    assert!(no_ca.contains("UnknownIssuer"), "a client that trusts only the system's CAs: {no_ca}");
    let no_cert = redis_error(&set(&set(&url, "ssl_certfile", None), "ssl_keyfile", None)).await;
    assert!(no_cert.contains("CertificateRequired"), "a client without a certificate: {no_cert}");
}

//! deploy/ checked with the real tools: `nginx -t` on every rendered config, the Compose file
//! and the Kubernetes manifests against their schemas (deploy/validate.py), the Dockerfile with
//! hadolint, the systemd units with `systemd-analyze verify`, Prometheus' compose config with
//! promtool. bin/test installs the tools (BOTFLEET_TEST_TOOLS: hadolint and Python's).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::helpers::{env, unique};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref().to_owned();
    Command::new(&program).args(args).output().unwrap_or_else(|e| panic!("running {program:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn tool(name: &str) -> PathBuf {
    Path::new(&env("BOTFLEET_TEST_TOOLS")).join(name)
}

/// A scratch folder, removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("deploy"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Renders deploy/nginx/nginx.conf.template for `mode` into `scratch`, checks it with `nginx -t`.
fn render_and_test(scratch: &Scratch, mode: &str, values: &[String]) -> String {
    let mut args = vec![mode];
    args.extend(values.iter().map(String::as_str));
    let rendered = run(repo("deploy/nginx/render"), &args);
    assert!(rendered.status.success(), "render {mode}: {}", text(&rendered));
    let config = scratch.path(&format!("{mode}.conf"));
    std::fs::write(&config, &rendered.stdout).unwrap();
    let checked = run(
        env("BOTFLEET_TEST_NGINX"),
        &["-t", "-q", "-p", &scratch.path(""), "-c", &config, "-e", &scratch.path("error.log")],
    );
    assert!(checked.status.success(), "nginx -t on the {mode} config:\n{}", text(&checked));
    String::from_utf8_lossy(&rendered.stdout).into_owned()
}

#[test]
fn nginx_accepts_the_production_compose_and_local_configs_rendered_from_one_template() {
    let scratch = Scratch::new();
    // Production reads Let's Encrypt's files: a self-signed pair stands in for them.
    let certs = scratch.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(scratch.path("tmp")).unwrap();
    let made = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bots.example.org",
            "-keyout",
            &format!("{certs}/privkey.pem"),
            "-out",
            &format!("{certs}/fullchain.pem"),
        ],
    );
    assert!(made.status.success(), "{}", text(&made));
    let paths = |extra: &[&str]| -> Vec<String> {
        let mut values = vec![
            format!("LOGS={}", scratch.path("")),
            format!("TMP={}", scratch.path("tmp")),
            format!("PID={}", scratch.path("nginx.pid")),
        ];
        values.extend(extra.iter().map(|v| v.to_string()));
        values
    };
    let production = render_and_test(
        &scratch,
        "production",
        &paths(&[
            "DOMAIN=bots.example.org",
            "WORKERS=127.0.0.1:8081 127.0.0.1:8083",
            "APIS=127.0.0.1:8082",
            &format!("CERTS={certs}"),
            "RUN_AS=www-data",
        ]),
    );
    for must in [
        "allow 149.154.160.0/20;",
        "allow 91.108.4.0/22;",
        "deny all;",
        "ssl_certificate",
        "limit_req zone=botfleet_api",
        "proxy_cache botfleet_feed;",
        "proxy_buffering off;",
        "keepalive 64;",
        "X-Request-Id $botfleet_request_id",
        "gzip_types application/json",
        "return 301 https://",
        "server 127.0.0.1:8083 max_fails=0;",
    ] {
        assert!(production.contains(must), "the production config lacks {must:?}");
    }
    let compose = render_and_test(
        &scratch,
        "compose",
        &paths(&["WORKERS=127.0.0.1:8081", "APIS=127.0.0.1:8082", "RUN_AS=www-data"]),
    );
    assert!(compose.contains("listen 80;") && compose.contains("proxy_cache botfleet_feed;"));
    let local = render_and_test(
        &scratch,
        "local",
        &[
            format!("STATE={}", scratch.path("")),
            format!("LOGS={}", scratch.path("")),
            format!("TMP={}", scratch.path("tmp")),
            format!("STATIC={}", scratch.path("static")),
            "PORT=18080".into(),
            "WORKERS=127.0.0.1:8081".into(),
            "APIS=127.0.0.1:8082".into(),
        ],
    );
    assert!(local.contains("allow 127.0.0.1;") && local.contains("proxy_cache botfleet_feed;"));
    // Every mode limits every client address the same way; only the local cluster's own load
    // generator (127.0.0.1) is let through unlimited.
    let limits = |config: &str| -> Vec<String> {
        config.lines().map(str::trim).filter(|l| l.starts_with("limit_")).map(str::to_owned).collect()
    };
    assert_eq!(limits(&production).len(), 12, "{:#?}", limits(&production));
    assert_eq!(limits(&compose), limits(&production), "compose limits as production does");
    assert_eq!(limits(&local), limits(&production), "the local cluster limits as production does");
    assert!(local.contains("127.0.0.1 1;") && !production.contains("127.0.0.1 1;"));
    // Bad input: a missing value and an unknown mode are refused with a clear message.
    let missing = run(repo("deploy/nginx/render"), &["production", "WORKERS=a:1", "APIS=b:2"]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(text(&missing).contains("DOMAIN= is required"), "{}", text(&missing));
    assert_eq!(run(repo("deploy/nginx/render"), &["staging"]).status.code(), Some(64));
}

#[test]
fn the_compose_file_and_the_kubernetes_manifests_match_their_schemas_least_privilege_and_a_mistake_is_caught()
{
    let python = tool("python3");
    let valid = run(&python, &[&repo("deploy/validate.py").to_string_lossy(), "1.30"]);
    assert!(valid.status.success(), "{}", text(&valid));
    // The same check on a copy with a mistake in each kind of file fails and names them.
    let scratch = Scratch::new();
    let copied = run("cp", &["-r", &repo("deploy").to_string_lossy(), &scratch.path("deploy")]);
    assert!(copied.status.success());
    let worker = scratch.path("deploy/k8s/base/worker.yaml");
    let manifest = std::fs::read_to_string(&worker)
        .unwrap()
        .replace("terminationGracePeriodSeconds: 35", "terminationGracePeriod: 35")
        .replace("BOTFLEET_DB_POOL_SIZE, value: \"8\"", "BOTFLEET_DB_POOL_SIZE, value: \"16\"");
    std::fs::write(&worker, manifest).unwrap();
    let compose = scratch.path("deploy/docker-compose.yml");
    let file =
        std::fs::read_to_string(&compose).unwrap().replace("stop_grace_period: 30s", "stop_grace: 30s");
    std::fs::write(&compose, file).unwrap();
    // An API node given the owner's Secret, and staging's settings given a database URL.
    let api = scratch.path("deploy/k8s/base/api.yaml");
    let manifest = std::fs::read_to_string(&api)
        .unwrap()
        .replace("secretName: botfleet-api,", "secretName: botfleet-migrate,");
    std::fs::write(&api, manifest).unwrap();
    let staging = scratch.path("deploy/k8s/overlays/staging/kustomization.yaml");
    let overlay = std::fs::read_to_string(&staging).unwrap().replace(
        "      - BOTFLEET_ENVIRONMENT=staging",
        "      - BOTFLEET_ENVIRONMENT=staging\n      - BOTFLEET_DATABASE_URL=postgres://postgres:pw@db/botfleet",
    );
    std::fs::write(&staging, overlay).unwrap();
    let caught = run(&python, &[&scratch.path("deploy/validate.py")]);
    assert!(!caught.status.success());
    let report = text(&caught);
    assert!(report.contains("k8s/base/worker.yaml") && report.contains("terminationGracePeriod"), "{report}");
    assert!(report.contains("docker-compose.yml") && report.contains("stop_grace"), "{report}");
    assert!(
        report.contains("k8s/base: botfleet-api reads the Secrets ['botfleet-migrate'], not its own only"),
        "{report}"
    );
    assert!(
        report.contains("k8s/overlays/staging: botfleet-api reads the Secrets ['botfleet-migrate']"),
        "the overlays are rendered and checked too: {report}"
    );
    assert!(
        report.contains("k8s/overlays/staging: ConfigMap botfleet holds BOTFLEET_DATABASE_URL"),
        "{report}"
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let linted = run(tool("hadolint"), &[&repo("Dockerfile").to_string_lossy()]);
    assert!(linted.status.success(), "hadolint:\n{}", text(&linted));
}

#[test]
fn the_systemd_units_verify() {
    // systemd-analyze checks that the command exists: point the units at the built binary.
    let scratch = Scratch::new();
    let mut units = Vec::new();
    for (file, instance) in [
        ("botfleet-worker@.service", "botfleet-worker@1.service"),
        ("botfleet-api@.service", "botfleet-api@1.service"),
        ("botfleet-migrate.service", "botfleet-migrate.service"),
    ] {
        let unit = std::fs::read_to_string(repo(&format!("deploy/systemd/{file}"))).unwrap();
        std::fs::write(
            scratch.path(instance),
            unit.replace("/usr/local/bin/botfleet", env!("CARGO_BIN_EXE_botfleet")),
        )
        .unwrap();
        units.push(scratch.path(instance));
    }
    let mut args = vec!["verify"];
    args.extend(units.iter().map(String::as_str));
    let verified = run("systemd-analyze", &args);
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&verified)
    );
}

#[test]
fn the_compose_prometheus_config_passes_promtool() {
    let scratch = Scratch::new();
    std::fs::copy(repo("deploy/compose/prometheus.yml"), scratch.path("prometheus.yml")).unwrap();
    std::fs::copy(repo("grafana/alerts.yml"), scratch.path("alerts.yml")).unwrap();
    let checked = run("promtool", &["check", "config", &scratch.path("prometheus.yml")]);
    assert!(checked.status.success(), "{}", text(&checked));
}

/// Nginx running the compose rendering on a free port, in front of an API node in the test.
struct Front {
    scratch: Scratch,
    port: u16,
}

impl Front {
    async fn start(api: &str) -> Self {
        let scratch = Scratch::new();
        std::fs::create_dir_all(scratch.path("tmp")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let values = [
            format!("PORT=127.0.0.1:{port}"),
            format!("LOGS={}", scratch.path("")),
            format!("TMP={}", scratch.path("tmp")),
            format!("PID={}", scratch.path("nginx.pid")),
            "RUN_AS=root".to_owned(),
            "WORKERS=127.0.0.1:9".to_owned(),
            format!("APIS={api}"),
        ];
        render_and_test(&scratch, "compose", &values);
        let config = scratch.path("compose.conf");
        // Nginx binds before it daemonizes: once this returns, it accepts connections.
        let started = run(
            env("BOTFLEET_TEST_NGINX"),
            &["-p", &scratch.path(""), "-c", &config, "-e", &scratch.path("error.log")],
        );
        assert!(started.status.success(), "{}", text(&started));
        Self { scratch, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let config = self.scratch.path("compose.conf");
        let _ = run(env("BOTFLEET_TEST_NGINX"), &["-p", &self.scratch.path(""), "-c", &config, "-s", "stop"]);
    }
}

#[tokio::test]
async fn nginx_limits_streams_and_stream_connects_per_address_and_cuts_off_slow_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = crate::helpers::Stack::start(false).await;
    let front = Front::start(&stack.api.addr.to_string()).await;
    // 20 streams from one address are served; the 21st is refused with 429.
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for _ in 0..20 {
        let stream = client.get(front.url("/api/feed/stream")).send().await.unwrap();
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }
    let refused = client.get(front.url("/api/feed/stream")).send().await.unwrap();
    assert_eq!(refused.status(), 429, "one address may hold 20 streams");
    drop(streams);
    // A resume storm (connect, resume, close, again) finds the connects used up: 1 a second.
    let mut served = 0;
    for _ in 0..20 {
        let resume = client.get(front.url("/api/feed/stream")).header("Last-Event-ID", "1-0");
        served += u32::from(resume.send().await.unwrap().status() == 200);
    }
    assert!(served <= 3, "{served} of 20 resumes after a burst served");
    // A client that sends half a request and stops is answered 408 and cut off after 10 s.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", front.port)).await.unwrap();
    slow.write_all(b"GET /api/feed HTTP/1.1\r\nHost: bots.example.org\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "nginx kept a slow client for 20 s");
    assert!(started.elapsed() >= std::time::Duration::from_secs(9), "cut off after {:?}", started.elapsed());
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// Invariant 6 through Nginx's cache: page 1 is answered from it, yet a new post is on page 1
/// through Nginx within a second, both after the fill that Nginx may keep longest (made 200 ms
/// into a second, kept to its end) and after Nginx checked an expired page with the node early
/// in a second (which must not keep it longer). With Nginx counting `Cache-Control: max-age=1`
/// either took up to two.
#[tokio::test]
async fn nginx_caches_page_one_yet_a_new_post_is_on_it_within_a_second() {
    use crate::helpers::{MAIN_BOT, Stack, deliver_update, eventually, text_update};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
    let stack = Stack::start(false).await;
    let front = Front::start(&stack.api.addr.to_string()).await;
    let page_one = || async {
        let feed: serde_json::Value = reqwest::get(front.url("/api/feed")).await.ok()?.json().await.ok()?;
        Some(feed["posts"][0]["text"].as_str()?.to_owned())
    };
    let node_answers = || {
        ["200", "304"]
            .iter()
            .map(|s| stack.api.metrics.api_requests.with_label_values(&["/api/feed", s]).get())
            .sum::<u64>()
    };
    // Not synchronisation: these pick moments in a second, as the cases need them.
    let into_next_second = |at: Duration| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        tokio::time::sleep(Duration::from_secs(1) - Duration::from_nanos(now.into()) + at)
    };
    let (stack, page_one) = (&stack, &page_one);
    let publish_and_time = |update_id: i64, text: &'static str| async move {
        deliver_update(&stack.worker, &MAIN_BOT, &text_update(update_id, 42, text)).await;
        let published = Instant::now();
        eventually(Duration::from_secs(3), text, || async { (page_one().await? == text).then_some(()) })
            .await;
        published.elapsed()
    };
    deliver_update(&stack.worker, &MAIN_BOT, &text_update(1, 42, "the first post")).await;

    into_next_second(Duration::from_millis(210)).await;
    let answered = node_answers();
    for _ in 0..3 {
        assert_eq!(page_one().await.as_deref(), Some("the first post"));
    }
    assert!(node_answers() < answered + 3, "Nginx must answer page 1 from its cache");
    let after_fill = publish_and_time(2, "the second post").await;
    assert!(after_fill <= Duration::from_secs(1), "on page 1 through Nginx after {after_fill:?}");

    into_next_second(Duration::from_millis(210)).await;
    assert_eq!(page_one().await.as_deref(), Some("the second post"));
    into_next_second(Duration::from_millis(50)).await;
    let answered = node_answers();
    assert_eq!(page_one().await.as_deref(), Some("the second post"));
    assert_eq!(node_answers(), answered + 1, "the expired page is checked with the node");
    let after_check = publish_and_time(3, "the third post").await;
    assert!(after_check <= Duration::from_secs(1), "on page 1 through Nginx after {after_check:?}");
}

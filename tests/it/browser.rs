//! The live feed page in a real browser (headless Chromium, driven over the DevTools protocol):
//! a post sent to the webhook appears without a reload, and user text is shown as text — a
//! `<script>` in it runs nothing.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{MAIN_BOT, Stack, deliver_update, eventually, text_update, unique};

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("Chromium is missing: bin/test installs it (apt-get install chromium)")
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page of a headless Chromium, driven over its DevTools WebSocket.
struct Page {
    socket: Socket,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::text(request)).await.unwrap();
        loop {
            let message = self.socket.next().await.expect("DevTools closed").unwrap();
            let Ok(text) = message.to_text() else { continue };
            let answer: Value = serde_json::from_str(text).unwrap_or_default();
            if answer["id"] == json!(id) {
                return answer["result"].clone();
            }
        }
    }

    /// Polls the feed's text until it contains `needle`, failing after ten seconds.
    async fn wait_for_feed_text(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.eval("document.getElementById('feed').innerText").await;
            let text = text.as_str().unwrap_or_default().to_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {needle:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result =
            self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await;
        result["result"]["value"].clone()
    }
}

#[tokio::test]
async fn the_live_page_shows_new_posts_without_reload_and_runs_no_user_script() {
    let Stack { worker, api, .. } = &Stack::start(false).await;
    deliver_update(worker, &MAIN_BOT, &text_update(1, 42, "already there when the page loads")).await;

    let profile = std::env::temp_dir().join(unique("chromium"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--remote-debugging-port={port}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(api.url("/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let targets = format!("http://127.0.0.1:{port}/json/list");
    let socket_url = eventually(Duration::from_secs(20), "Chromium's DevTools endpoint", || async {
        let targets: Value = reqwest::get(&targets).await.ok()?.json().await.ok()?;
        targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    let (socket, _) = tokio_tungstenite::connect_async(socket_url.as_str()).await.unwrap();
    let mut page = Page { socket, next_id: 0 };

    page.wait_for_feed_text("already there when the page loads").await;
    // Once the page's EventSource is connected, a new post must reach it live.
    eventually(Duration::from_secs(10), "the page to open its live stream", || async {
        (api.metrics.sse_clients.get() >= 1).then_some(())
    })
    .await;
    let hostile =
        "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED'\"> live post";
    deliver_update(worker, &MAIN_BOT, &text_update(2, 42, hostile)).await;
    let shown = page.wait_for_feed_text("live post").await;
    assert!(shown.contains(hostile), "the live post must appear, its markup shown as text: {shown}");
    assert_eq!(page.eval("document.title").await, json!("botfleet — live feed"), "user text must never run");
    assert_eq!(page.eval("document.querySelectorAll('#feed img, #feed script').length").await, json!(0));
    assert_eq!(page.eval("document.querySelectorAll('#feed article').length").await, json!(2));
    std::fs::remove_dir_all(&profile).ok();
}

//! The live feed page in a real browser (headless Chromium, driven over the DevTools protocol):
//! a post sent to the webhook appears without a reload, and user text is shown as text — a
//! `<script>` in it runs nothing.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{MAIN_BOT, Stack, deliver_update, text_update, unique, watch_output};

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
    /// Events that arrived while waiting for an answer, oldest first.
    events: Vec<String>,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::text(request)).await.unwrap();
        loop {
            let message = self.read().await;
            if message["id"] == json!(id) {
                return message["result"].clone();
            }
            if let Some(event) = message["method"].as_str() {
                self.events.push(event.to_owned());
            }
        }
    }

    async fn read(&mut self) -> Value {
        let message = self.socket.next().await.expect("DevTools closed").unwrap();
        serde_json::from_str(message.to_text().unwrap_or_default()).unwrap_or_default()
    }

    /// Waits for the DevTools event `method` (it may have arrived already).
    async fn event(&mut self, method: &str) {
        if let Some(at) = self.events.iter().position(|e| e == method) {
            self.events.drain(..=at);
            return;
        }
        while self.read().await["method"] != json!(method) {}
    }

    /// Opens `url` and waits for its load event.
    async fn open(&mut self, url: &str) {
        self.call("Page.enable", json!({})).await;
        self.call("Page.navigate", json!({ "url": url })).await;
        self.event("Page.loadEventFired").await;
    }

    /// Waits, in the page, until the text of the element `element_id` contains `needle` (a
    /// MutationObserver, no polling), failing after ten seconds; returns the text.
    async fn wait_for_text(&mut self, element_id: &str, needle: &str) -> String {
        let needle_js = serde_json::to_string(needle).unwrap();
        let expression = format!(
            "new Promise((resolve) => {{
               const element = document.getElementById('{element_id}');
               const done = () => element.innerText.includes({needle_js}) && (resolve(element.innerText), true);
               if (!done()) new MutationObserver(done).observe(element, {{ childList: true, subtree: true, characterData: true }});
             }})"
        );
        let params = json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let shown = tokio::time::timeout(Duration::from_secs(10), self.call("Runtime.evaluate", params))
            .await
            .unwrap_or_else(|_| panic!("the page never showed {needle:?} in #{element_id}"));
        shown["result"]["value"].as_str().unwrap_or_default().to_owned()
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
    let mut browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Chromium picks a free port and says which once it listens.
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (listening, _output) = watch_output(browser.stderr.take().unwrap(), "DevTools listening on ", None);
    // A bound for a stuck browser, not a measure of its start: with its files out of the page
    // cache (a fresh machine, as in CI) Chromium reads them from disk first, 16 s here when idle.
    let line = tokio::time::timeout(Duration::from_secs(90), listening)
        .await
        .expect("Chromium did not open DevTools within 90 s")
        .expect("Chromium exited without opening DevTools");
    let browser_url = line.split("DevTools listening on ").nth(1).unwrap();
    // ws://127.0.0.1:PORT/devtools/browser/ID → a new page target on that port.
    let host = browser_url.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
    let target: Value = reqwest::Client::new()
        .put(format!("http://{host}/json/new?about:blank"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let socket_url = target["webSocketDebuggerUrl"].as_str().expect("a page target").to_owned();
    let (socket, _) = tokio_tungstenite::connect_async(socket_url.as_str()).await.unwrap();
    let mut page = Page { socket, next_id: 0, events: Vec::new() };
    page.open(&api.url("/")).await;

    page.wait_for_text("feed", "already there when the page loads").await;
    // Once the page's EventSource is connected (the page then says "live"), a new post must
    // reach it live.
    page.wait_for_text("status", "live").await;
    let hostile =
        "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED'\"> live post";
    deliver_update(worker, &MAIN_BOT, &text_update(2, 42, hostile)).await;
    let shown = page.wait_for_text("feed", "live post").await;
    assert!(shown.contains(hostile), "the live post must appear, its markup shown as text: {shown}");
    assert_eq!(page.eval("document.title").await, json!("botfleet — live feed"), "user text must never run");
    assert_eq!(page.eval("document.querySelectorAll('#feed img, #feed script').length").await, json!(0));
    assert_eq!(page.eval("document.querySelectorAll('#feed article').length").await, json!(2));
    std::fs::remove_dir_all(&profile).ok();
}

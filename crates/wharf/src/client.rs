//! The client commands: each is one or two calls to the API of a running `wharf serve`.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use wharf_image::PullEvent;

use crate::cli::{Command, DeployArgs, Global, ImageCommand, InvokeArgs};

/// Exit status when the function ran and reported an error.
const EXIT_FUNCTION_ERROR: u8 = 1;
/// Exit status when Wharf (or the request) failed.
const EXIT_WHARF_ERROR: u8 = 2;

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(global: &Global) -> anyhow::Result<Client> {
        let token = match &global.token {
            Some(t) => t.clone(),
            None => {
                let path = global.data_dir()?.join(wharf_api::auth::TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "cannot read the API token {} (is `wharf serve` running with this \
                             data directory? pass --data-dir or set WHARF_TOKEN)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Client {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            base: global.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send().await.with_context(|| {
            format!(
                "cannot reach Wharf at {} (is `wharf serve` running? see --url)",
                self.base
            )
        })
    }

    /// [`call`](Client::call), with an API error turned into an error.
    pub(crate) async fn call_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        let resp = self.call(method, path, body).await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(resp)
    }
}

/// The API's error body, as one line: `Code: message`.
async fn api_error(resp: Response) -> anyhow::Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v["error"]["code"].is_string() => anyhow::anyhow!(
            "{}: {}",
            v["error"]["code"].as_str().unwrap_or_default(),
            v["error"]["message"].as_str().unwrap_or_default()
        ),
        _ => anyhow::anyhow!("HTTP {status}: {}", text.trim()),
    }
}

pub async fn run(global: Global, command: Command) -> anyhow::Result<ExitCode> {
    let client = Client::new(&global)?;
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Deploy(args) => deploy(&client, args).await,
        Command::Invoke(args) => invoke(&client, args).await,
        Command::Ls => ls(&client).await,
        Command::Get { name } => get(&client, &name).await,
        Command::Rm { name } => rm(&client, &name).await,
        Command::Logs {
            name,
            tail,
            follow,
            request,
        } => logs(&client, &name, tail, follow, request.as_deref()).await,
        Command::Invocations { name, limit, json } => {
            invocations(&client, &name, limit, json).await
        }
        Command::Ps { name, json } => ps(&client, name.as_deref(), json).await,
        Command::Image(ImageCommand::Ls { json }) => crate::images::ls(&client, json).await,
        Command::Image(ImageCommand::Prune { json }) => crate::images::prune(&client, json).await,
        Command::Version(c) => crate::versions::version(&client, c).await,
        Command::Alias(c) => crate::versions::alias(&client, c).await,
    }
}

fn spinner(message: String) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        eprintln!("{message}");
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(message);
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

async fn deploy(client: &Client, a: DeployArgs) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "image": a.image, "contract": a.contract });
    let mut env = serde_json::Map::new();
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?} must be KEY=VALUE");
        };
        env.insert(k.to_string(), Value::String(v.to_string()));
    }
    body["env"] = Value::Object(env);
    if let Some(m) = &a.mode {
        body["mode"] = json!(m);
    }
    if let Some(m) = a.memory {
        body["memory_mb"] = json!(m);
    }
    if let Some(t) = a.timeout {
        body["timeout_s"] = json!(t);
    }
    if let Some(p) = a.port {
        body["port"] = json!(p);
    }
    if !a.command.is_empty() {
        body["command"] = json!(a.command);
    }
    if !a.args.is_empty() {
        body["args"] = json!(a.args);
    }
    if let Some(w) = a.working_dir {
        body["working_dir"] = json!(w);
    }
    if let Some(u) = a.uid {
        body["uid"] = json!(u);
    }
    if let Some(g) = a.gid {
        body["gid"] = json!(g);
    }
    if let Some(t) = a.initializer_timeout {
        body["initializer"] = json!({ "timeout_s": t });
    }
    match (a.registry_user, a.registry_password) {
        (Some(u), Some(p)) => body["registry_auth"] = json!({ "username": u, "password": p }),
        (None, None) => {}
        _ => bail!("--registry-user and --registry-password go together"),
    }
    if a.no_prepull {
        body["prepull"] = json!(false);
    }
    if let Some(d) = a.disk {
        body["disk_mb"] = json!(d);
    }
    if let Some(ro) = a.read_only_rootfs {
        body["read_only_rootfs"] = json!(ro);
    }
    if !a.mounts.is_empty() {
        let mut mounts = Vec::new();
        for m in &a.mounts {
            let (source, target, read_only) =
                crate::cli::parse_mount(m).map_err(anyhow::Error::msg)?;
            mounts.push(json!({ "source": source, "target": target, "read_only": read_only }));
        }
        body["mounts"] = Value::Array(mounts);
    }
    if let Some(n) = a.network {
        body["network"] = json!(n);
    }
    if let Some(t) = a.pre_freeze_timeout {
        body["pre_freeze"] = json!({ "timeout_s": t });
    }
    if let Some(t) = a.pre_stop_timeout {
        body["pre_stop"] = json!({ "timeout_s": t });
    }
    if let Some(n) = a.concurrency {
        body["concurrency"] = json!(n);
    }
    if let Some(n) = a.min_instances {
        body["min_instances"] = json!(n);
    }
    if let Some(n) = a.max_instances {
        body["max_instances"] = json!(n);
    }
    if let Some(t) = a.idle_timeout_s {
        body["idle_timeout_s"] = json!(t);
    }
    if a.no_freeze {
        body["freeze_idle"] = json!(false);
    }
    let mut display = PullDisplay::new(format!("deploying {} from {} ...", a.name, a.image));
    let result = deploy_streaming(client, &a.name, &body, &mut display).await;
    display.finish();
    let (status, f) = result?;
    let verb = if status == StatusCode::CREATED {
        "created"
    } else {
        "updated"
    };
    println!(
        "{verb} function {} (revision {}): {} @ {}, contract {}, {} MB, timeout {} s",
        f["name"].as_str().unwrap_or_default(),
        f["revision"],
        f["image"].as_str().unwrap_or_default(),
        f["image_digest"].as_str().unwrap_or_default(),
        f["contract"].as_str().unwrap_or_default(),
        f["memory_mb"],
        f["timeout_s"],
    );
    Ok(ExitCode::SUCCESS)
}

/// `PUT /v1/functions/{name}` asking for the pull's progress as JSON lines; shows each event
/// and returns the final status and function.
async fn deploy_streaming(
    client: &Client,
    name: &str,
    body: &Value,
    display: &mut PullDisplay,
) -> anyhow::Result<(StatusCode, Value)> {
    let url = format!("{}/v1/functions/{name}", client.base);
    let mut resp = client
        .http
        .put(&url)
        .bearer_auth(&client.token)
        .header(reqwest::header::ACCEPT, wharf_api::functions::NDJSON)
        .body(serde_json::to_vec(body)?)
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach Wharf at {} (is `wharf serve` running? see --url)",
                client.base
            )
        })?;
    if !resp.status().is_success() {
        return Err(api_error(resp).await);
    }
    let streamed = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(wharf_api::functions::NDJSON));
    if !streamed {
        // A daemon that does not stream answers with the function itself.
        let status = resp.status();
        return Ok((status, resp.json().await?));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("the deploy's answer broke off (did the daemon stop?)")?
    {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let v: Value = serde_json::from_slice(&line)
                .with_context(|| format!("the deploy sent a line that is not JSON: {line:?}"))?;
            if v.get("event").is_some() {
                // Events this client does not know are skipped.
                if let Ok(event) = serde_json::from_value::<PullEvent>(v) {
                    display.show(&event);
                }
                continue;
            }
            let status = v["status"]
                .as_u64()
                .and_then(|s| StatusCode::from_u16(s as u16).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if v["error"]["code"].is_string() {
                bail!(
                    "{}: {}",
                    v["error"]["code"].as_str().unwrap_or_default(),
                    v["error"]["message"].as_str().unwrap_or_default()
                );
            }
            return Ok((status, v["function"].clone()));
        }
    }
    bail!("the deploy's answer ended before its result (did the daemon stop?)")
}

/// Shows pull progress: bars on a terminal, plain lines (at most one per layer per
/// [`PLAIN_INTERVAL`]) otherwise.
struct PullDisplay {
    bars: Option<Bars>,
    /// Plain mode: when each layer's download was last printed.
    printed: HashMap<String, Instant>,
}

struct Bars {
    multi: indicatif::MultiProgress,
    spinner: indicatif::ProgressBar,
    layers: HashMap<String, indicatif::ProgressBar>,
}

/// Least time between two plain progress lines of one layer.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);

/// `sha256:0123456789ab…`
fn short(digest: &str) -> String {
    match digest.get(..19) {
        Some(head) if digest.len() > 19 => format!("{head}…"),
        _ => digest.to_string(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

impl PullDisplay {
    fn new(message: String) -> PullDisplay {
        let bars = spinner(message).map(|spinner| {
            let multi = indicatif::MultiProgress::new();
            let spinner = multi.add(spinner);
            Bars {
                multi,
                spinner,
                layers: HashMap::new(),
            }
        });
        PullDisplay {
            bars,
            printed: HashMap::new(),
        }
    }

    fn show(&mut self, event: &PullEvent) {
        match &mut self.bars {
            Some(bars) => bars.show(event),
            None => self.print(event),
        }
    }

    fn print(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Layers {
                reference, layers, ..
            } => eprintln!(
                "pulling {reference}: {} layer{}, {} MiB",
                layers.len(),
                if layers.len() == 1 { "" } else { "s" },
                mib(layers.iter().map(|l| l.size).sum())
            ),
            PullEvent::LayerPresent { layer, .. } => {
                eprintln!("layer {} already present", short(layer));
            }
            PullEvent::Downloading {
                layer,
                downloaded,
                total,
            } => {
                let now = Instant::now();
                let due = self
                    .printed
                    .get(layer)
                    .is_none_or(|t| now.duration_since(*t) >= PLAIN_INTERVAL);
                if due || downloaded == total {
                    self.printed.insert(layer.clone(), now);
                    eprintln!(
                        "pulling layer {} {}/{} MiB",
                        short(layer),
                        mib(*downloaded),
                        mib(*total)
                    );
                }
            }
            PullEvent::Unpacking { layer } => eprintln!("unpacking layer {}", short(layer)),
            PullEvent::LayerDone {
                layer,
                unpacked_bytes,
            } => eprintln!(
                "layer {} done ({} MiB unpacked)",
                short(layer),
                mib(*unpacked_bytes)
            ),
        }
    }

    fn finish(self) {
        if let Some(bars) = self.bars {
            for bar in bars.layers.values() {
                bar.finish_and_clear();
            }
            bars.spinner.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}

impl Bars {
    fn bar(&mut self, layer: &str, total: u64) -> &indicatif::ProgressBar {
        let multi = &self.multi;
        self.layers.entry(layer.to_string()).or_insert_with(|| {
            let bar = multi.add(indicatif::ProgressBar::new(total));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(short(layer));
            bar
        })
    }

    fn show(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Layers { layers, .. } => {
                for l in layers {
                    self.bar(&l.digest, l.size);
                }
            }
            PullEvent::LayerPresent { layer, size } => {
                let bar = self.bar(layer, *size);
                bar.set_position(*size);
                bar.finish_with_message("already present");
            }
            PullEvent::Downloading {
                layer,
                downloaded,
                total,
            } => {
                let bar = self.bar(layer, *total);
                bar.set_position(*downloaded);
                bar.set_message("downloading");
            }
            PullEvent::Unpacking { layer } => {
                let bar = self.bar(layer, 0);
                bar.set_position(bar.length().unwrap_or(0));
                bar.set_message("unpacking");
            }
            PullEvent::LayerDone { layer, .. } => {
                self.bar(layer, 0).finish_with_message("done");
            }
        }
    }
}

async fn invoke(client: &Client, a: InvokeArgs) -> anyhow::Result<ExitCode> {
    let event = match (&a.data, &a.file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        (None, Some(f)) => std::fs::read(f)
            .with_context(|| format!("cannot read the event file {}", f.display()))?,
        (None, None) => Vec::new(),
    };
    let resp = client
        .call(
            Method::POST,
            &format!("/v1/functions/{}/invoke", a.name),
            Some(event),
        )
        .await?;
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let request_id = header("x-wharf-request-id").unwrap_or_default();
    let function_error = header("x-wharf-function-error");
    if a.verbose {
        eprintln!(
            "request {request_id} instance {} cold-start {} duration {} ms{}",
            header("x-wharf-instance-id").unwrap_or_else(|| "-".into()),
            header("x-wharf-cold-start").unwrap_or_else(|| "-".into()),
            header("x-wharf-duration-ms").unwrap_or_else(|| "-".into()),
            header("x-wharf-init-duration-ms")
                .map(|d| format!(" init {d} ms"))
                .unwrap_or_default(),
        );
    }
    if header("x-wharf-instance-id").is_none() {
        // No instance answered: the error is Wharf's.
        let e = api_error(resp).await;
        eprintln!("error: {e} (request {request_id})");
        return Ok(ExitCode::from(EXIT_WHARF_ERROR));
    }
    let body = resp.bytes().await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    if out.is_terminal() && !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if let Some(reason) = function_error {
        eprintln!("error: function error: {reason} (request {request_id})");
        return Ok(ExitCode::from(EXIT_FUNCTION_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(client: &Client) -> anyhow::Result<ExitCode> {
    let resp = client.call_ok(Method::GET, "/v1/functions", None).await?;
    let v: Value = resp.json().await?;
    let functions = v["functions"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<24} {:<8} {:>9} {:>9}  {:<19}  IMAGE",
        "NAME", "CONTRACT", "MEMORY", "TIMEOUT", "DIGEST"
    );
    for f in functions {
        let digest = f["image_digest"].as_str().unwrap_or_default();
        println!(
            "{:<24} {:<8} {:>9} {:>9}  {:<19}  {}",
            f["name"].as_str().unwrap_or_default(),
            f["contract"].as_str().unwrap_or_default(),
            format!("{} MB", f["memory_mb"]),
            format!("{} s", f["timeout_s"]),
            digest.get(..19).unwrap_or(digest),
            f["image"].as_str().unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let resp = client
        .call_ok(Method::GET, &format!("/v1/functions/{name}"), None)
        .await?;
    let v: Value = resp.json().await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

async fn rm(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    client
        .call_ok(Method::DELETE, &format!("/v1/functions/{name}"), None)
        .await?;
    println!("deleted function {name}");
    Ok(ExitCode::SUCCESS)
}

async fn logs(
    client: &Client,
    name: &str,
    tail: usize,
    follow: bool,
    request: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/functions/{name}/logs?tail={tail}");
    if let Some(id) = request {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            anyhow::bail!(
                "--request {id:?} is not a request id: use the id an invocation returned (its \
                 x-wharf-request-id header, or `wharf invocations {name}`)"
            );
        }
        path = format!("{path}&request={id}");
    }
    if !follow {
        let resp = client.call_ok(Method::GET, &path, None).await?;
        let v: Value = resp.json().await?;
        let mut out = std::io::stdout().lock();
        for e in v["entries"].as_array().into_iter().flatten() {
            print_log_entry(&mut out, e)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // JSON lines, as they are written, until the function is deleted (or Ctrl-C).
    let mut resp = client
        .call_ok(Method::GET, &format!("{path}&follow=true"), None)
        .await?;
    let mut pending = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        pending.extend_from_slice(&chunk);
        let mut out = std::io::stdout().lock();
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(e) = serde_json::from_slice::<Value>(&line) {
                print_log_entry(&mut out, &e)?;
            }
        }
        out.flush()?;
    }
    eprintln!("function {name} was deleted");
    Ok(ExitCode::SUCCESS)
}

fn print_log_entry(out: &mut impl Write, e: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {} {:<6} {}",
        e["time"].as_str().unwrap_or_default(),
        e["instance"].as_str().unwrap_or_default(),
        e["stream"].as_str().unwrap_or_default(),
        e["message"].as_str().unwrap_or_default(),
    )
}

async fn ps(client: &Client, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => {
            let v: Value = client
                .call_ok(Method::GET, "/v1/functions", None)
                .await?
                .json()
                .await?;
            v["functions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect()
        }
    };
    let mut all = Vec::new();
    for n in &names {
        let v: Value = client
            .call_ok(Method::GET, &format!("/v1/functions/{n}/instances"), None)
            .await?
            .json()
            .await?;
        for i in v["instances"].as_array().into_iter().flatten() {
            let mut i = i.clone();
            // A published version's instances show as NAME:VERSION.
            i["function"] = match i["version"].as_u64() {
                Some(v) => json!(format!("{n}:{v}")),
                None => json!(n),
            };
            all.push(i);
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"instances": all}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20}  {:<32}  {:<8}  {:>4}  {:>8}  {:>9}  {:>8}  MEMORY (now/peak/limit MB)",
        "FUNCTION", "INSTANCE", "STATE", "REV", "UP", "IN FLIGHT", "REQUESTS"
    )?;
    for i in &all {
        let mb = |f: &str| i[f].as_u64().map_or("-".to_string(), |m| m.to_string());
        let up = now.saturating_sub(i["started_at_ms"].as_u64().unwrap_or(now)) / 1000;
        writeln!(
            out,
            "{:<20}  {:<32}  {:<8}  {:>4}  {:>7}s  {:>9}  {:>8}  {}/{}/{}",
            i["function"].as_str().unwrap_or_default(),
            i["id"].as_str().unwrap_or_default(),
            i["state"].as_str().unwrap_or_default(),
            // Width applies to strings, not to JSON values.
            i["revision"].to_string(),
            up,
            i["in_flight"].to_string(),
            i["requests"].to_string(),
            mb("memory_now_mb"),
            mb("memory_peak_mb"),
            mb("memory_limit_mb"),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn invocations(
    client: &Client,
    name: &str,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let resp = client
        .call_ok(
            Method::GET,
            &format!("/v1/functions/{name}/invocations?limit={limit}"),
            None,
        )
        .await?;
    let v: Value = resp.json().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<36}  {:<4}  {:>10}  {:>10}  {:>7}  STATUS",
        "REQUEST ID", "START", "DURATION", "INIT", "MEMORY"
    )?;
    for r in v["invocations"].as_array().into_iter().flatten() {
        let ms = |field: &str| {
            r[field]
                .as_f64()
                .map(|m| format!("{m:.2} ms"))
                .unwrap_or_else(|| "-".into())
        };
        let memory = match (
            r["max_memory_used_mb"].as_u64(),
            r["memory_limit_mb"].as_u64(),
        ) {
            (Some(used), Some(limit)) => format!("{used}/{limit}"),
            _ => "-".into(),
        };
        let status = match r["status"].as_str().unwrap_or_default() {
            "success" => "ok".to_string(),
            "function_error" => format!("function error: {}", r["error"].as_str().unwrap_or("")),
            _ => format!(
                "{}: {}",
                r["error_code"].as_str().unwrap_or("error"),
                r["error"].as_str().unwrap_or("")
            ),
        };
        writeln!(
            out,
            "{:<36}  {:<4}  {:>10}  {:>10}  {:>7}  {status}",
            r["request_id"].as_str().unwrap_or_default(),
            if r["cold_start"].as_bool() == Some(true) {
                "cold"
            } else {
                "warm"
            },
            ms("duration_ms"),
            ms("init_duration_ms"),
            memory,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

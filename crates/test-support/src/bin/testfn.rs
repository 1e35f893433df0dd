//! `wharf-testfn`: the test function. A small FC-style HTTP server whose behaviour the tests
//! steer through its environment (at start) and its events (per call). It is also the image the
//! quickstart deploys as `hello`.
//!
//! Start-up, from the environment:
//! - `TESTFN_PORT` (else `FC_SERVER_PORT`, else `PORT`, else 9000): the port; `TESTFN_BIND` (default
//!   `0.0.0.0`): the address.
//! - `TESTFN_MODE=never-listen`: print a line and never listen; `exit`: print a line and exit 3;
//!   `sleep`: sleep until killed (the children of the `fork` command).
//! - `TESTFN_MODE=hog`: allocate and touch memory until killed (the child of `oom-child`).
//! - `TESTFN_MODE=job`: a job image (no server): reads its event (JSON) from
//!   `FC_CUSTOM_CONTAINER_EVENT` or `SCF_CUSTOM_CONTAINER_EVENT`, prints `job event: <event>`,
//!   sleeps `sleep_ms`, and exits with code `exit` (default 0).
//! - `TESTFN_INIT_STATUS`: status `/initialize` (and `/init`) answers (default 200).
//! - `TESTFN_PRE_FREEZE_STATUS`, `TESTFN_PRE_STOP_STATUS`: status `GET /pre-freeze` and
//!   `GET /pre-stop` answer (default 200); each call prints `testfn: pre-freeze called` or
//!   `testfn: pre-stop called`.
//! - `TESTFN_START_DELAY_MS`: wait this long before listening (a slow cold start).
//! - `TESTFN_IGNORE_SIGTERM=1`: do not handle SIGTERM (as pid 1, it is then ignored).
//! - `TESTFN_KEEPALIVE_MS`: close a connection that sends no request for this long (as Node's
//!   `keepAliveTimeout` does; default: keep it).
//!
//! Routes: `/initialize` (FC) and `/init` (FunctionGraph) are the initialize hook; `/invoke`
//! (FC, FunctionGraph) and `/event-invoke` (SCF) take events; `/pre-freeze`, `/pre-stop` are FC's
//! hooks. Any other path (an HTTP function's) answers the request it got as JSON: `method`,
//! `path`, `query`, `headers`, `body` (as text), `env` (`PORT` and the `K_*` variables); with
//! status `?status=N` (default 200) and header `x-testfn-path`.
//!
//! Events (JSON):
//! - `{"name": "x"}` → `Hello, x!`
//! - `{"cmd": "headers"}` → the request headers as a JSON object
//! - `{"cmd": "state"}` → counters (initialize, invoke, invokes before initialize, pre-freeze,
//!   pre-stop, the spinner's count), uid/gid, supplementary groups, cwd, pid, environment
//! - `{"cmd": "write", "path": "/tmp/f", "mb": 8}` → writes that many MiB (or `"text"`), stopping
//!   at the first error: `{"ok", "written_mb", "error"}`; `{"cmd": "read", "path"}` →
//!   `{"ok", "content", "error"}`; `{"cmd": "remove", "path"}` → `{"ok", "error"}`
//! - `{"cmd": "spin"}` → starts a thread that counts as fast as it can (once), answers `spinning`
//! - `{"cmd": "oom-child"}` → runs a child (`TESTFN_MODE=hog`) that allocates until the OOM killer
//!   ends it, answers `{"child": "<how it ended>"}`
//! - `{"cmd": "status", "status": 404}` → that status
//! - `{"cmd": "x-fc-status", "value": "404"}` → 200 with `x-fc-status: <value>`
//! - `{"cmd": "sleep", "ms": 100}` → answers after sleeping
//! - `{"cmd": "respond-headers", "headers": {"k": "v"}}` → 200 with those response headers
//! - `{"cmd": "print", "stdout": "...", "stderr": "..."}` → prints them, answers `printed`
//! - `{"cmd": "exit", "code": 3}` → exits without answering
//! - `{"cmd": "alloc", "mb": 200}` → allocates and touches that many MiB, frees them, answers
//!   `allocated 200 MiB` (past the memory limit, the OOM killer ends the instance instead)
//! - `{"cmd": "fork", "n": 2000}` → starts up to `n` sleeping child processes (itself, with
//!   `TESTFN_MODE=sleep`), stops at the first failure, kills and reaps them all, answers
//!   `{"started": k, "error": "<first failure>" | null}`
//! - `{"cmd": "probe", "connect": ["127.0.0.1:9800"]}` → what the function sees of its
//!   confinement, as JSON: `status` (the `Cap*`, `NoNewPrivs` and `Seccomp` lines of
//!   `/proc/self/status`), `pids` (the numeric entries of `/proc`), `syscalls` (`"ok"` or the
//!   error of `unshare(CLONE_NEWUSER)` and `clone(CLONE_NEWUSER)`, each in a child that exits at
//!   once, of `keyctl(GET_KEYRING_ID)` and of an empty `clone3`), `addresses` (`"eth0: 10.…"`
//!   for each IPv4 address), `masked` (bytes readable from `/proc/keys`,
//!   `/proc/kcore`, `/proc/timer_list`, or the error), `connect` (per address: `"connected"` or
//!   the error of a TCP connect with a 1 s timeout)
//! - an API-gateway event (`httpMethod` and `isBase64Encoded` in it) → the gateway answer:
//!   status from its `status` query parameter (default 200), its body decoded and sent back
//!   base64-encoded (`isBase64Encoded: true`), headers `x-apigw-method`, `x-apigw-path` and
//!   `x-apigw-query` (its query parameters as JSON); with query `malformed=1`, an answer whose
//!   `statusCode` is a string
//! - anything else → echoed back

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};

static INITS: AtomicU64 = AtomicU64::new(0);
static INVOKES: AtomicU64 = AtomicU64::new(0);
static INVOKES_BEFORE_INIT: AtomicU64 = AtomicU64::new(0);
static INIT_HEADERS: Mutex<Option<BTreeMap<String, String>>> = Mutex::new(None);
static PRE_FREEZES: AtomicU64 = AtomicU64::new(0);
static PRE_STOPS: AtomicU64 = AtomicU64::new(0);
static SPINS: AtomicU64 = AtomicU64::new(0);
static SPINNING: std::sync::Once = std::sync::Once::new();

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn complain(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn headers_of(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("<non-ascii>").to_string(),
            )
        })
        .collect()
}

fn ids() -> (String, String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    (field("Uid:"), field("Gid:"))
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().to_string();
    let headers = headers_of(&req);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match path.as_str() {
        "/pre-freeze" | "/pre-stop" => {
            let (counter, var) = if path == "/pre-freeze" {
                (&PRE_FREEZES, "TESTFN_PRE_FREEZE_STATUS")
            } else {
                (&PRE_STOPS, "TESTFN_PRE_STOP_STATUS")
            };
            counter.fetch_add(1, Ordering::SeqCst);
            say(&format!("testfn: {} called", &path[1..]));
            let status = std::env::var(var)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            Ok(reply(status, "hook done"))
        }
        "/initialize" | "/init" => {
            INITS.fetch_add(1, Ordering::SeqCst);
            *INIT_HEADERS.lock().unwrap() = Some(headers);
            say("testfn: initialize called");
            let status = std::env::var("TESTFN_INIT_STATUS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            Ok(reply(status, "initialized"))
        }
        "/invoke" | "/event-invoke" => {
            INVOKES.fetch_add(1, Ordering::SeqCst);
            if INITS.load(Ordering::SeqCst) == 0 {
                INVOKES_BEFORE_INIT.fetch_add(1, Ordering::SeqCst);
            }
            Ok(invoke(headers, body).await)
        }
        _ => Ok(echo_request(method, &path, query, headers, &body)),
    }
}

/// An HTTP function's answer: the request it got, as JSON.
fn echo_request(
    method: String,
    path: &str,
    query: Option<String>,
    headers: BTreeMap<String, String>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let status = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("status="))
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k == "PORT" || k.starts_with("K_"))
        .collect();
    let mut r = reply(
        status,
        json!({
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "body": String::from_utf8_lossy(body),
            "env": env,
        })
        .to_string(),
    );
    if let Ok(v) = http::HeaderValue::from_str(path) {
        r.headers_mut().insert("x-testfn-path", v);
    }
    r
}

/// The answer to an API-gateway event: its body back, and what the event said in headers.
fn gateway_answer(event: &Value) -> Response<Full<Bytes>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let query = event
        .get("queryStringParameters")
        .cloned()
        .unwrap_or(Value::Null);
    if query.get("malformed").is_some() {
        return reply(200, json!({"statusCode": "200", "body": "x"}).to_string());
    }
    let status = query
        .get("status")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    let body = event
        .get("body")
        .and_then(Value::as_str)
        .and_then(|b| b64.decode(b).ok())
        .unwrap_or_default();
    let answer = json!({
        "isBase64Encoded": true,
        "statusCode": status,
        "headers": {
            "content-type": "application/octet-stream",
            "x-apigw-method": event.get("httpMethod"),
            "x-apigw-path": event.get("path"),
            "x-apigw-query": query.to_string(),
        },
        "body": b64.encode(body),
    });
    reply(200, answer.to_string())
}

async fn invoke(headers: BTreeMap<String, String>, body: Bytes) -> Response<Full<Bytes>> {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(name) = event.get("name").and_then(Value::as_str) {
        return reply(200, format!("Hello, {name}!\n"));
    }
    if event.get("httpMethod").is_some() && event.get("isBase64Encoded").is_some() {
        return gateway_answer(&event);
    }
    match event.get("cmd").and_then(Value::as_str) {
        Some("headers") => reply(200, json!(headers).to_string()),
        Some("state") => {
            let (uid, gid) = ids();
            let env: BTreeMap<String, String> = std::env::vars().collect();
            reply(
                200,
                json!({
                    "initialize_calls": INITS.load(Ordering::SeqCst),
                    "invoke_calls": INVOKES.load(Ordering::SeqCst),
                    "invokes_before_initialize": INVOKES_BEFORE_INIT.load(Ordering::SeqCst),
                    "initialize_headers": *INIT_HEADERS.lock().unwrap(),
                    "pre_freeze_calls": PRE_FREEZES.load(Ordering::SeqCst),
                    "pre_stop_calls": PRE_STOPS.load(Ordering::SeqCst),
                    "spins": SPINS.load(Ordering::Relaxed),
                    "uid": uid,
                    "gid": gid,
                    "groups": status_field("Groups:"),
                    "pid": std::process::id(),
                    "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                    "env": env,
                })
                .to_string(),
            )
        }
        Some("status") => {
            let status = event.get("status").and_then(Value::as_u64).unwrap_or(500) as u16;
            reply(status, "failed on purpose\n")
        }
        Some("x-fc-status") => {
            let value = event.get("value").and_then(Value::as_str).unwrap_or("404");
            let mut r = reply(200, "reported through x-fc-status\n");
            r.headers_mut().insert(
                "x-fc-status",
                http::HeaderValue::from_str(value).unwrap_or(http::HeaderValue::from_static("404")),
            );
            r
        }
        Some("respond-headers") => {
            let mut r = reply(200, "with headers\n");
            for (k, v) in event
                .get("headers")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let (Ok(name), Some(Ok(value))) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    v.as_str().map(http::HeaderValue::from_str),
                ) {
                    r.headers_mut().insert(name, value);
                }
            }
            r
        }
        Some("sleep") => {
            let ms = event.get("ms").and_then(Value::as_u64).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(200, format!("slept {ms} ms\n"))
        }
        Some("print") => {
            if let Some(s) = event.get("stdout").and_then(Value::as_str) {
                say(s);
            }
            if let Some(s) = event.get("stderr").and_then(Value::as_str) {
                complain(s);
            }
            reply(200, "printed\n")
        }
        Some("exit") => {
            let code = event.get("code").and_then(Value::as_i64).unwrap_or(3) as i32;
            say(&format!("testfn: exiting with {code} on request"));
            std::process::exit(code);
        }
        Some("alloc") => {
            let mb = event.get("mb").and_then(Value::as_u64).unwrap_or(64) as usize;
            // Non-zero bytes: every page is written, so every page is charged.
            let block = std::hint::black_box(vec![1u8; mb << 20]);
            drop(block);
            reply(200, format!("allocated {mb} MiB\n"))
        }
        Some("fork") => {
            let n = event.get("n").and_then(Value::as_u64).unwrap_or(100);
            reply(200, fork(n).to_string())
        }
        Some("probe") => reply(200, probe(&event).to_string()),
        Some("write") => reply(200, write_file(&event).to_string()),
        Some("read") => {
            let path = event.get("path").and_then(Value::as_str).unwrap_or("");
            let answer = match std::fs::read(path) {
                Ok(bytes) => {
                    let shown = &bytes[..bytes.len().min(4096)];
                    json!({"ok": true, "content": String::from_utf8_lossy(shown), "error": null})
                }
                Err(e) => json!({"ok": false, "content": null, "error": e.to_string()}),
            };
            reply(200, answer.to_string())
        }
        Some("remove") => {
            let path = event.get("path").and_then(Value::as_str).unwrap_or("");
            let answer = match std::fs::remove_file(path) {
                Ok(()) => json!({"ok": true, "error": null}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            };
            reply(200, answer.to_string())
        }
        Some("spin") => {
            SPINNING.call_once(|| {
                std::thread::spawn(|| {
                    loop {
                        SPINS.fetch_add(1, Ordering::Relaxed);
                    }
                });
            });
            reply(200, "spinning\n")
        }
        Some("oom-child") => {
            let child = std::process::Command::new("/proc/self/exe")
                .env("TESTFN_MODE", "hog")
                .stdin(std::process::Stdio::null())
                .status();
            let how = match child {
                Ok(status) => status.to_string(),
                Err(e) => format!("could not run: {e}"),
            };
            reply(200, json!({"child": how}).to_string())
        }
        _ => reply(200, body),
    }
}

/// A `Name:` line of `/proc/self/status`, its value trimmed.
fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// `{"path", "mb" | "text"}`: writes 1 MiB blocks of non-zero bytes (or the text), syncing
/// nothing; reports how far it got and the first error.
fn write_file(event: &Value) -> Value {
    use std::io::Write as _;
    let path = event.get("path").and_then(Value::as_str).unwrap_or("");
    let mut file = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return json!({"ok": false, "written_mb": 0, "error": e.to_string()}),
    };
    if let Some(text) = event.get("text").and_then(Value::as_str) {
        return match file.write_all(text.as_bytes()) {
            Ok(()) => json!({"ok": true, "written_mb": 0, "error": null}),
            Err(e) => json!({"ok": false, "written_mb": 0, "error": e.to_string()}),
        };
    }
    let mb = event.get("mb").and_then(Value::as_u64).unwrap_or(1);
    let block = vec![0x5au8; 1 << 20];
    for written in 0..mb {
        if let Err(e) = file.write_all(&block) {
            return json!({"ok": false, "written_mb": written, "error": e.to_string()});
        }
    }
    json!({"ok": true, "written_mb": mb, "error": null})
}

/// Starts up to `n` sleeping children, then kills and reaps them all.
fn fork(n: u64) -> Value {
    let mut children = Vec::new();
    let mut error = None;
    for _ in 0..n {
        match std::process::Command::new("/proc/self/exe")
            .env("TESTFN_MODE", "sleep")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => children.push(child),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let started = children.len();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    json!({"started": started, "error": error})
}

/// `"ok"` or the error of a syscall's return value.
fn outcome(ret: libc::c_long) -> String {
    if ret >= 0 {
        "ok".into()
    } else {
        std::io::Error::last_os_error().to_string()
    }
}

/// Run `call` in a child (`clone` as `fork`, from the raw syscall) that exits at once with its
/// errno (0 = it succeeded), so that nothing it changes touches this process.
fn in_child(call: fn() -> libc::c_long) -> String {
    // SAFETY: the child calls only async-signal-safe functions (a syscall and `_exit`).
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    if pid == 0 {
        let ret = call();
        let code = if ret >= 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(255)
        };
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        return format!("fork failed: {}", std::io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for the child just created.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 => "ok".into(),
        errno => std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// `interface: address` for every IPv4 address of the instance's network namespace.
fn ipv4_addresses() -> Vec<String> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; every pointer read is
    // checked for null first, and the sockaddr is only read as sockaddr_in when it says AF_INET.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let addr = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
                out.push(format!("{name}: {addr}"));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

fn probe(event: &Value) -> Value {
    let status: BTreeMap<String, String> = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap") || *k == "NoNewPrivs" || *k == "Seccomp")
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    let mut pids: Vec<u64> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let syscalls = json!({
        // SAFETY: plain syscalls with integer arguments, in a child.
        "unshare_newuser": in_child(|| unsafe {
            libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER as libc::c_long)
        }),
        "clone_newuser": in_child(|| {
            // SAFETY: as `fork`; a grandchild, if created, exits at once.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long,
                    0,
                    0,
                    0,
                    0,
                )
            };
            if pid == 0 {
                // SAFETY: ends the grandchild.
                unsafe { libc::_exit(0) };
            }
            pid
        }),
        // KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3), not creating it.
        // SAFETY: a plain syscall with integer arguments.
        "keyctl": outcome(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3 as libc::c_long, 0) }),
        // No arguments (size 0): the kernel refuses it with EINVAL before doing anything.
        // SAFETY: as above.
        "clone3": outcome(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) }),
    });
    let masked: BTreeMap<&str, String> = ["/proc/keys", "/proc/kcore", "/proc/timer_list"]
        .into_iter()
        .map(|path| {
            let seen = match std::fs::read(path) {
                Ok(bytes) => format!("{} bytes", bytes.len()),
                Err(e) => e.to_string(),
            };
            (path, seen)
        })
        .collect();
    let connect: BTreeMap<String, String> = event
        .get("connect")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|addr| {
            let result = match addr.parse::<SocketAddr>() {
                Ok(a) => match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
                    Ok(_) => "connected".to_string(),
                    Err(e) => e.to_string(),
                },
                Err(e) => format!("bad address: {e}"),
            };
            (addr.to_owned(), result)
        })
        .collect();
    json!({
        "addresses": ipv4_addresses(),
        "status": status,
        "pids": pids,
        "syscalls": syscalls,
        "masked": masked,
        "connect": connect,
    })
}

/// A job: the event in a variable, the result in the exit code.
fn job() -> ! {
    let (var, event) = ["FC_CUSTOM_CONTAINER_EVENT", "SCF_CUSTOM_CONTAINER_EVENT"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().map(|e| (v, e)))
        .unwrap_or(("none", String::new()));
    say(&format!("job event from {var}: {event}"));
    let event: Value = serde_json::from_str(&event).unwrap_or(Value::Null);
    if let Some(ms) = event.get("sleep_ms").and_then(Value::as_u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    std::process::exit(event.get("exit").and_then(Value::as_i64).unwrap_or(0) as i32)
}

fn main() {
    let mode = std::env::var("TESTFN_MODE").unwrap_or_default();
    let port: u16 = std::env::var("TESTFN_PORT")
        .or_else(|_| std::env::var("FC_SERVER_PORT"))
        .or_else(|_| std::env::var("PORT"))
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9000);
    let bind = std::env::var("TESTFN_BIND").unwrap_or_else(|_| "0.0.0.0".into());
    match mode.as_str() {
        "never-listen" => {
            say("testfn: told never to listen");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "sleep" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "exit" => {
            complain("testfn: told to exit at once");
            std::process::exit(3);
        }
        "job" => job(),
        "hog" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                held.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        _ => {}
    }
    if let Some(ms) = std::env::var("TESTFN_START_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let addr: SocketAddr = format!("{bind}:{port}").parse().expect("address");
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        say(&format!("testfn: listening on {addr}"));
        complain("testfn: this line goes to stderr");
        let keepalive = std::env::var("TESTFN_KEEPALIVE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let ignore_term = std::env::var("TESTFN_IGNORE_SIGTERM").is_ok_and(|v| v == "1");
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if ignore_term {
                        say("testfn: SIGTERM, ignored");
                        continue;
                    }
                    say("testfn: SIGTERM, exiting");
                    std::process::exit(0);
                }
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    tokio::spawn(async move {
                        let mut builder = http1::Builder::new();
                        if let Some(idle) = keepalive {
                            builder.timer(TokioTimer::new()).header_read_timeout(idle);
                        }
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service_fn(handle))
                            .await;
                    });
                }
            }
        }
    });
}

//! The test function itself, run as a plain process: what the end-to-end tests rely on it to do.
//! (This test target also makes `cargo test --workspace` build `wharf-testfn`, which the
//! end-to-end tests of the `wharf` crate pack into an image.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

const TESTFN: &str = env!("CARGO_BIN_EXE_wharf-testfn");

fn post(port: u16, path: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

#[test]
fn the_test_function_answers_as_the_tests_expect() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(TESTFN)
        .env("TESTFN_PORT", port.to_string())
        .env("TESTFN_BIND", "127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run wharf-testfn");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("listening on 127.0.0.1"), "{line}");

    let (status, _, body) = post(port, "/invoke", r#"{"name":"wharf"}"#);
    assert_eq!((status, body.as_str()), (200, "Hello, wharf!\n"));
    let (status, _, _) = post(port, "/invoke", r#"{"cmd":"status","status":404}"#);
    assert_eq!(status, 404);
    let (status, head, _) = post(port, "/invoke", r#"{"cmd":"x-fc-status","value":"404"}"#);
    assert_eq!(status, 200);
    assert!(head.contains("x-fc-status: 404"), "{head}");
    let (_, head, _) = post(
        port,
        "/invoke",
        r#"{"cmd":"respond-headers","headers":{"x-one":"1"}}"#,
    );
    assert!(head.contains("x-one: 1"), "{head}");
    let (status, _, _) = post(port, "/initialize", "");
    assert_eq!(status, 200);
    let (_, _, state) = post(port, "/invoke", r#"{"cmd":"state"}"#);
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["initialize_calls"], 1);
    assert_eq!(state["invokes_before_initialize"], 4);

    // SIGTERM ends it at once.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

//! The demo's sample workloads and its client, run inside pod namespaces as
//! `ward demo-workload …` (hidden): an HTTP/1.1 server, a TCP greeting-echo server, and one
//! call with a one-line outcome the tour parses.
//!
//! They use blocking std sockets and a thread per connection on purpose: a demo pod serves a
//! handful of calls, and the demo must need nothing beyond `ip` and `nft` on the machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

/// How long a call may take before the tour reports a timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest request head or body a demo server accepts.
const MAX_REQUEST: usize = 64 * 1024;
/// Largest response a call reads (a proxy's metrics page fits).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

#[derive(Subcommand)]
pub enum WorkloadCommand {
    /// Serve HTTP/1.1 on PORT: every request is answered `200 <name>: <METHOD> <path>`.
    Http {
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
    },
    /// Serve TCP on PORT: greets with `<name>: hello`, then echoes lines.
    Tcp {
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
    },
    /// GET PATH from TO; prints the body of a 200 response (exit 1 otherwise).
    Get {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        path: String,
    },
    /// One call; prints one line: `http <status>`, `tcp <greeting>`, or `error <what>`.
    Call {
        /// `http` or `tcp`.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
    },
}

pub fn run(cmd: WorkloadCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkloadCommand::Http { name, port } => serve(port, name, serve_http),
        WorkloadCommand::Tcp { name, port } => serve(port, name, serve_tcp),
        WorkloadCommand::Get { to, path } => {
            let (status, body) = request(to, "GET", &path)?;
            if status != "200" {
                anyhow::bail!("GET {path} from {to}: {status}");
            }
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        WorkloadCommand::Call {
            kind,
            to,
            method,
            path,
        } => {
            let outcome = match kind.as_str() {
                "http" => call_http(to, &method, &path),
                "tcp" => call_tcp(to),
                other => anyhow::bail!("--kind {other:?}: expected http or tcp"),
            };
            match outcome {
                Ok(line) => println!("{line}"),
                Err(e) => println!("error {}", describe(&e)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(
    port: u16,
    name: String,
    handler: fn(TcpStream, &str) -> std::io::Result<()>,
) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    let name: &'static str = Box::leak(name.into_boxed_str());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = handler(stream, name);
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// HTTP/1.1 with keep-alive: reads a head and a `content-length` body, answers, repeats.
fn serve_http(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut length = 0usize;
        let mut close = false;
        let mut head = request_line.len();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            head += line.len();
            if head > MAX_REQUEST {
                return out.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse().unwrap_or(usize::MAX);
                } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        if length > MAX_REQUEST {
            return out.write_all(
                b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let text = format!("{name}: {method} {path}\n");
        write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        )?;
        if close {
            return Ok(());
        }
    }
}

fn serve_tcp(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    writeln!(out, "{name}: hello")?;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        writeln!(out, "{}", line?)?;
    }
    Ok(())
}

fn call_http(to: SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    request(to, method, path).map(|(status, _)| format!("http {status}"))
}

/// One HTTP/1.1 request; the response's status code and body.
fn request(to: SocketAddr, method: &str, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&to, CALL_TIMEOUT)?;
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {to}\r\nuser-agent: ward-demo\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    )?;
    let mut response = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    match status {
        Some(code) => Ok((code.to_owned(), body.to_owned())),
        None if response.is_empty() => Err(std::io::ErrorKind::ConnectionReset.into()),
        None => Err(std::io::Error::other("not an HTTP/1.1 response")),
    }
}

fn call_tcp(to: SocketAddr) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&to, CALL_TIMEOUT)?;
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let _ = s.shutdown(Shutdown::Both);
    if line.is_empty() {
        // The proxy accepted the connection locally, then closed it: refused by policy.
        return Err(std::io::ErrorKind::ConnectionReset.into());
    }
    Ok(format!("tcp {}", line.trim_end()))
}

/// A short, stable word for how a call failed (the tour prints it).
fn describe(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "reset",
        ConnectionRefused => "refused",
        TimedOut | WouldBlock => "timeout",
        _ => "failed",
    }
}

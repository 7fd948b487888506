//! A real S3-compatible server for the offsite tests: the `s3s-fs` crate's file-system backend
//! behind `s3s`'s HTTP service (what `s3s-fs`'s own binary runs), as a process of its own on
//! loopback. Objects are plain files under ROOT/BUCKET/KEY.
//!
//!   s3-server --listen 127.0.0.1:0 --access-key AK --secret-key SK ROOT
//!
//! Prints `listening on http://ADDR` once it accepts connections; SIGKILL ends it (tests use
//! that to cut uploads midway).

use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: s3-server --listen ADDR --access-key AK --secret-key SK ROOT";
    let root = PathBuf::from(args.last().filter(|_| args.len() > 1).ok_or(usage)?);
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let (ak, sk) = (arg(&args, "--access-key").ok_or(usage)?, arg(&args, "--secret-key").ok_or(usage)?);
    std::fs::create_dir_all(&root)?;
    let mut b = S3ServiceBuilder::new(s3s_fs::FileSystem::new(&root).map_err(|e| format!("{e:?}"))?);
    b.set_auth(SimpleAuth::from_single(ak, sk));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let http = Builder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

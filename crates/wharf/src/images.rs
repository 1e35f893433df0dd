//! `wharf image ls` and `wharf image prune`: calls to `/v1/images`.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::Value;

use crate::client::Client;

pub async fn ls(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let resp = client.call_ok(Method::GET, "/v1/images", None).await?;
    let v: Value = resp.json().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:<19} {:>10} {:>6} {:>6}  FUNCTIONS",
        "REPOSITORY", "DIGEST", "SIZE", "LAYERS", "IN USE"
    );
    for i in v["images"].as_array().into_iter().flatten() {
        let pinned = i["pinned"].as_str().unwrap_or_default();
        let repository = pinned.split_once('@').map_or(pinned, |(r, _)| r);
        let digest = i["digest"].as_str().unwrap_or_default();
        let functions: Vec<&str> = i["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut functions = if functions.is_empty() {
            "-".to_string()
        } else {
            functions.join(",")
        };
        if i["complete"] == false {
            functions.push_str(" (incomplete: pulled again when needed)");
        }
        println!(
            "{:<40} {:<19} {:>10} {:>6} {:>6}  {}",
            repository,
            digest.get(..19).unwrap_or(digest),
            human_size(i["size_bytes"].as_u64().unwrap_or(0)),
            i["layers"],
            i["in_use"],
            functions,
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn prune(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let resp = client
        .call_ok(Method::POST, "/v1/images/prune", None)
        .await?;
    let v: Value = resp.json().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let images = v["images_removed"].as_array().cloned().unwrap_or_default();
    for i in &images {
        println!("removed image {}", i.as_str().unwrap_or_default());
    }
    println!(
        "removed {} images, {} blobs and {} unpacked layers; freed {}",
        images.len(),
        v["blobs_removed"],
        v["layers_removed"],
        human_size(v["bytes_freed"].as_u64().unwrap_or(0)),
    );
    Ok(ExitCode::SUCCESS)
}

/// `1.5 MiB`, `812 KiB`, `0 B`.
fn human_size(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if v < 10.0 {
                format!("{v:.1} {unit}")
            } else {
                format!("{v:.0} {unit}")
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_short() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}

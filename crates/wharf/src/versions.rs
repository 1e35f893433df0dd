//! `wharf version …` and `wharf alias …`: calls to `/v1/functions/{name}/versions` and
//! `…/aliases`.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{AliasCommand, VersionCommand};
use crate::client::Client;

pub async fn version(client: &Client, c: VersionCommand) -> anyhow::Result<ExitCode> {
    match c {
        VersionCommand::Publish { name, description } => {
            let body = json!({ "description": description })
                .to_string()
                .into_bytes();
            let resp = client
                .call_ok(
                    Method::POST,
                    &format!("/v1/functions/{name}/versions"),
                    Some(body),
                )
                .await?;
            let created = resp.status() == reqwest::StatusCode::CREATED;
            let v: Value = resp.json().await?;
            let version = &v["version"];
            if created {
                println!(
                    "published {name}:{version} (revision {})",
                    v["config"]["revision"]
                );
            } else {
                println!(
                    "{name}:{version} already is the current configuration; nothing published"
                );
            }
        }
        VersionCommand::Ls { name, json } => {
            let Some(v) = listing(client, &format!("/v1/functions/{name}/versions"), json).await?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            println!(
                "{:>7}  {:<24}  {:>4}  {:<40}  DESCRIPTION",
                "VERSION", "CREATED", "REV", "IMAGE"
            );
            for r in v["versions"].as_array().into_iter().flatten() {
                println!(
                    "{:>7}  {:<24}  {:>4}  {:<40}  {}",
                    // Width applies to strings, not to JSON values.
                    r["version"].to_string(),
                    r["created_at"].as_str().unwrap_or_default(),
                    r["config"]["revision"].to_string(),
                    r["config"]["image"].as_str().unwrap_or_default(),
                    r["description"].as_str().unwrap_or_default(),
                );
            }
        }
        VersionCommand::Rm { name, version } => {
            client
                .call_ok(
                    Method::DELETE,
                    &format!("/v1/functions/{name}/versions/{version}"),
                    None,
                )
                .await?;
            println!("deleted {name}:{version}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn alias(client: &Client, c: AliasCommand) -> anyhow::Result<ExitCode> {
    match c {
        AliasCommand::Set {
            name,
            alias,
            version,
            weight,
            description,
        } => {
            let weights: serde_json::Map<String, Value> = weight
                .iter()
                .map(|(v, w)| (v.to_string(), json!(w)))
                .collect();
            let body = json!({
                "version": version,
                "additional_version_weights": weights,
                "description": description,
            });
            let v: Value = client
                .call_ok(
                    Method::PUT,
                    &format!("/v1/functions/{name}/aliases/{alias}"),
                    Some(body.to_string().into_bytes()),
                )
                .await?
                .json()
                .await?;
            println!("{name}:{alias} → {}", routes(&v));
        }
        AliasCommand::Ls { name, json } => {
            let Some(v) = listing(client, &format!("/v1/functions/{name}/aliases"), json).await?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            println!("{:<24}  {:<28}  DESCRIPTION", "ALIAS", "VERSIONS");
            for a in v["aliases"].as_array().into_iter().flatten() {
                println!(
                    "{:<24}  {:<28}  {}",
                    a["name"].as_str().unwrap_or_default(),
                    routes(a),
                    a["description"].as_str().unwrap_or_default(),
                );
            }
        }
        AliasCommand::Rm { name, alias } => {
            client
                .call_ok(
                    Method::DELETE,
                    &format!("/v1/functions/{name}/aliases/{alias}"),
                    None,
                )
                .await?;
            println!("deleted {name}:{alias}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The API's answer to `GET path`; with `json`, printed as it is, and `None`.
async fn listing(client: &Client, path: &str, json: bool) -> anyhow::Result<Option<Value>> {
    let v: Value = client
        .call_ok(Method::GET, path, None)
        .await?
        .json()
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(None);
    }
    Ok(Some(v))
}

/// `1` or `1 (70%), 2 (30%)`.
fn routes(a: &Value) -> String {
    let Some((other, w)) = a["additional_version_weights"]
        .as_object()
        .and_then(|m| m.iter().next())
        .and_then(|(v, w)| Some((v.clone(), w.as_f64()?)))
    else {
        return a["version"].to_string();
    };
    format!(
        "{} ({:.0}%), {other} ({:.0}%)",
        a["version"],
        (1.0 - w) * 100.0,
        w * 100.0
    )
}

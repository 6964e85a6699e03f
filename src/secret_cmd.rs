//! `kvnode secret install|use|remove|list` (through one node, on every live member, one line
//! per member) and `kvnode keygen` (issue 27, part 3). Secrets are shown by fingerprint only.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::json;
use tokio::time::Instant;

use crate::cli::{KeygenArgs, SecretAction, SecretArgs};
use crate::client::{ClientError, Settings};
use crate::commands::{ask, unexpected};
use crate::keyring::{self, MIN_NEW_SECRET};
use crate::output::Output;
use crate::secret::{Secret, SecretError};
use crate::wire::{KeyringOp, KeyringView, NodeKeyring, Reply, Request};

/// Runs one `kvnode secret` action against the node `settings.via` names.
pub(crate) async fn run(
    args: SecretArgs,
    settings: &Settings,
    deadline: Instant,
    out: &mut Output,
) -> Result<(), ClientError> {
    let op = match args.action {
        SecretAction::List(_) => KeyringOp::List,
        SecretAction::Install(a) => {
            let secret = read_key_file(&a.file)?;
            if secret.as_bytes().len() < MIN_NEW_SECRET {
                return Err(ClientError::Usage(format!(
                    "the secret in {} is {} bytes; a new secret must be at least {MIN_NEW_SECRET} (32 random bytes are best): make one with `kvnode keygen --output FILE`",
                    a.file.display(),
                    secret.as_bytes().len()
                )));
            }
            KeyringOp::Install(secret)
        }
        SecretAction::Use(a) => KeyringOp::Use(read_key_file(&a.file)?),
        SecretAction::Remove(a) => KeyringOp::Remove(read_key_file(&a.file)?),
    };
    let verb = op.verb();
    let secret_fp = match &op {
        KeyringOp::Install(s) | KeyringOp::Use(s) | KeyringOp::Remove(s) => Some(keyring::fingerprint(s)),
        KeyringOp::List => None,
    };
    let reply = ask(settings, deadline, Request::Keyring { op, fan_out: true }).await?;
    let Reply::KeyringReport(report) = reply else {
        return unexpected(&reply);
    };
    match &secret_fp {
        None => print_list(&report, out),
        Some(fp) => print_changes(&report, verb, fp, out),
    }
    failures(&report, verb)
}

/// Reads a secret file given to `kvnode secret` (as `--secret-file` is read: mode 0600, one
/// trailing line end dropped), with errors that name it as this command's FILE.
fn read_key_file(path: &Path) -> Result<Secret, ClientError> {
    crate::secret::read_secret_file(path).map_err(|e| match e {
        SecretError::Missing { path } => ClientError::Usage(format!(
            "the secret file {path} does not exist; give the path of a secret file (make one with `kvnode keygen --output FILE`)"
        )),
        SecretError::Empty => ClientError::Usage(format!(
            "the secret file {} is empty; give a file that holds a secret (make one with `kvnode keygen --output FILE`)",
            path.display()
        )),
        e => ClientError::Secret(e),
    })
}

/// One line per member: what it did, or why it did not.
fn print_changes(report: &[NodeKeyring], verb: &str, fp: &str, out: &mut Output) {
    let width = report.iter().map(|n| n.node.as_str().len()).max().unwrap_or(4).max(4);
    if !out.is_json() {
        out.line(&format!("{:width$}  RESULT", "NODE"));
    }
    for n in report {
        match (&n.result, out.is_json()) {
            (Ok(v), true) => out.object(json!({
                "node": n.node.as_str(), "ok": true, "action": verb, "secret": fp,
                "changed": v.changed, "in_use": v.in_use, "installed": v.installed,
            })),
            (Err(e), true) => out.object(json!({
                "node": n.node.as_str(), "ok": false, "action": verb, "secret": fp,
                "error": e.to_string(), "code": e.exit_code(),
            })),
            (Ok(v), false) => {
                let done = match (verb, v.changed) {
                    ("install", true) => format!("installed {fp}"),
                    ("install", false) => format!("{fp} was installed already"),
                    ("use", true) => format!("now uses {fp}"),
                    ("use", false) => format!("was using {fp} already"),
                    (_, true) => format!("removed {fp}"),
                    (_, false) => format!("{fp} was not installed"),
                };
                out.line(&format!(
                    "{:width$}  ok: {done} (in use: {}; installed: {})",
                    n.node.as_str(),
                    v.in_use,
                    v.installed.join(" ")
                ));
            }
            (Err(e), false) => out.line(&format!("{:width$}  FAILED: {e}", n.node.as_str())),
        }
    }
}

/// Each secret with how many members hold it and which use it (as `consul keyring -list`),
/// then the members that did not answer.
fn print_list(report: &[NodeKeyring], out: &mut Output) {
    let answered: Vec<(&str, &KeyringView)> = report
        .iter()
        .filter_map(|n| n.result.as_ref().ok().map(|v| (n.node.as_str(), v)))
        .collect();
    // In the order first seen, members in name order: the oldest secret first, mostly.
    let mut secrets: Vec<&str> = Vec::new();
    let mut held: BTreeMap<&str, (usize, Vec<&str>)> = BTreeMap::new();
    for (node, v) in &answered {
        for fp in &v.installed {
            if !secrets.contains(&fp.as_str()) {
                secrets.push(fp);
            }
            let entry = held.entry(fp).or_default();
            entry.0 += 1;
            if v.in_use == *fp {
                entry.1.push(node);
            }
        }
    }
    let of = report.len();
    if !out.is_json() {
        out.line("SECRET    MEMBERS  IN USE ON");
    }
    for fp in secrets {
        let (count, using) = &held[fp];
        if out.is_json() {
            out.object(json!({ "secret": fp, "members": count, "of": of, "in_use_on": using }));
        } else {
            let using = if using.is_empty() {
                "-".to_string()
            } else {
                using.join(", ")
            };
            out.line(&format!("{fp:8}  {:>7}  {using}", format!("{count}/{of}")));
        }
    }
    for n in report {
        if let Err(e) = &n.result {
            if out.is_json() {
                out.object(json!({ "node": n.node.as_str(), "error": e.to_string(), "code": e.exit_code() }));
            } else {
                out.line(&format!("{}: FAILED: {e}", n.node.as_str()));
            }
        }
    }
}

/// The command's error if any member failed: its exit code is the first failure's.
fn failures(report: &[NodeKeyring], verb: &str) -> Result<(), ClientError> {
    let failed: Vec<(&str, &crate::wire::RemoteError)> = report
        .iter()
        .filter_map(|n| n.result.as_ref().err().map(|e| (n.node.as_str(), e)))
        .collect();
    let Some((_, first)) = failed.first() else {
        return Ok(());
    };
    let names: Vec<&str> = failed.iter().map(|(n, _)| *n).collect();
    let what = if verb == "list" {
        "did not answer"
    } else {
        "did not make the change (the others did; it is safe to run it again)"
    };
    Err(ClientError::MembersFailed {
        message: format!(
            "{} of {} members {what}: {}",
            failed.len(),
            report.len(),
            names.join(", ")
        ),
        code: first.exit_code(),
    })
}

/// `kvnode keygen`: 32 random bytes from the operating system, in hex (the form
/// `KVNODE_HOME/secret` is made in, and a secret file is read as: its bytes as they are).
pub(crate) fn keygen(args: KeygenArgs, out: &mut Output) -> Result<(), ClientError> {
    let mut random = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| ClientError::Usage("the operating system's random source failed".into()))?;
    let secret = keyring::hex(&random);
    let Some(path) = args.output else {
        out.line(&secret);
        return Ok(());
    };
    let cannot = |e: std::io::Error| {
        ClientError::Usage(format!(
            "cannot write the new secret to {}: {e}{}",
            path.display(),
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                "; give a path that does not exist yet (a secret is never overwritten)"
            } else {
                ""
            }
        ))
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(cannot)?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(cannot)?;
    if out.is_json() {
        let fp = keyring::fingerprint(&Secret::new(secret.into_bytes()).expect("64 hex digits"));
        out.object(json!({ "file": path.display().to_string(), "secret": fp }));
    }
    Ok(())
}

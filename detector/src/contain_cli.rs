//! `detector incidents`, `release`, `approve` and `confirm`: thin wrappers over
//! [`detector::contain`]. `approve` and `confirm` only journal what a person decided; the
//! daemon, which follows the journal, acts on it.
//!
//! `release` runs outside the daemon, so it cannot touch the daemon's kernel maps: it undoes
//! the API steps itself (guarded by the same configuration, dry run included), journals the
//! kernel block as pending, and the daemon, which follows the journal, lifts it within a
//! second and journals the incident as released.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use detector::{
    config::Config,
    contain::{
        journal::{self, EntryKind, IncidentRecord, IncidentState, Journal},
        kube::KubeApi,
        release,
    },
};

/// Where the journal is.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Configuration file (YAML); its `contain.journal_dir` is used.
    #[arg(long, short, env = "DETECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// The journal directory (overrides the configuration).
    #[arg(long)]
    journal_dir: Option<PathBuf>,
}

impl JournalArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.journal_dir {
            config.contain.journal_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Prints the journal's incidents, one line each (or JSON with `json`).
pub fn incidents(args: &JournalArgs, json: bool) -> anyhow::Result<()> {
    let config = args.load()?;
    let path = config.contain.journal_dir.join(journal::JOURNAL_FILE);
    let (entries, _) = journal::read_from(&path, 0)?;
    for record in journal::replay(&entries).values() {
        if json {
            println!("{}", serde_json::to_string(record)?);
            continue;
        }
        let pod = match (&record.subject.namespace, &record.subject.pod) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => record.subject.key.clone(),
        };
        println!(
            "{}  {:?}{}  {pod}  node={}  score={:.1}  {}",
            record.id,
            record.state,
            if record.dry_run { " (dry run)" } else { "" },
            record.node,
            record.score,
            record.reason
        );
        for (step, outcome) in &record.steps {
            println!("    {step}: {}", outcome.summary());
        }
        for (step, outcome) in &record.undone {
            println!("    undo {step}: {}", outcome.summary());
        }
    }
    Ok(())
}

/// Approves a proposed incident: the daemon runs its playbook within a second.
pub fn approve(args: &JournalArgs, id: &str) -> anyhow::Result<()> {
    decide(
        args,
        id,
        |record| record.state == IncidentState::Proposed,
        "approve",
        || EntryKind::Approved { by: "cli".into() },
    )
}

/// Confirms an incident: it stays until released, whatever its mode's expiry.
pub fn confirm(args: &JournalArgs, id: &str) -> anyhow::Result<()> {
    decide(args, id, IncidentRecord::active, "confirm", || {
        EntryKind::Confirmed { by: "cli".into() }
    })
}

/// Journals a person's decision about incident `id`, if its state allows it.
fn decide(
    args: &JournalArgs,
    id: &str,
    allowed: impl Fn(&IncidentRecord) -> bool,
    what: &str,
    kind: impl Fn() -> EntryKind,
) -> anyhow::Result<()> {
    let (_, journal, records) = open(args)?;
    let record = find(&records, id, &journal)?;
    if !allowed(record) {
        anyhow::bail!(
            "incident {id} is {:?}: there is nothing to {what}",
            record.state
        );
    }
    journal.append(id, kind())?;
    println!("{id}: {what}d; the running daemon acts on it within a second");
    Ok(())
}

/// The configuration, its journal and the journal's incidents.
fn open(args: &JournalArgs) -> anyhow::Result<(Config, Journal, BTreeMap<String, IncidentRecord>)> {
    let config = args.load()?;
    let journal = Journal::open(&config.contain.journal_dir)?;
    let records = journal::replay(&journal.entries()?);
    Ok((config, journal, records))
}

/// Incident `id` of `records`, or an error naming the journal.
fn find<'a>(
    records: &'a BTreeMap<String, IncidentRecord>,
    id: &str,
    journal: &Journal,
) -> anyhow::Result<&'a IncidentRecord> {
    records
        .get(id)
        .with_context(|| format!("no incident {id} in {}", journal.path().display()))
}

/// Releases an incident from outside the daemon.
pub fn release(args: &JournalArgs, id: &str) -> anyhow::Result<()> {
    let (config, journal, records) = open(args)?;
    let record = find(&records, id, &journal)?;
    let needs_api = record.steps.iter().any(|(step, outcome)| {
        outcome.changed() && !matches!(step.as_str(), "kernel_block" | "freeze" | "kill")
    });
    let held = release::node_held_by(record, records.values());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let api = if needs_api {
                let client = kube::Client::try_default().await.context(
                    "the incident changed cluster objects, and the cluster is unreachable",
                )?;
                Some(KubeApi::new(client, config.contain.api.clone()))
            } else {
                None
            };
            let mut journal_error = None;
            let result = release::release(
                &config.contain,
                record,
                held,
                api.as_ref(),
                None,
                None,
                "cli",
                |kind| {
                    if let Err(err) = journal.append(id, kind) {
                        journal_error.get_or_insert(err);
                    }
                },
            )
            .await;
            if let Some(err) = journal_error {
                return Err(err.into());
            }
            result.map_err(anyhow::Error::from)
        })?;
    let after = journal::replay(&journal.entries()?);
    if let Some(record) = after.get(id) {
        for (step, outcome) in &record.undone {
            println!("undo {step}: {}", outcome.summary());
        }
        println!("{id}: {:?}", record.state);
    }
    Ok(())
}

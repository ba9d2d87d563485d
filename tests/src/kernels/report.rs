//! What `detector-kernel-check` reports (one machine line, [`MARKER`] then JSON), what the
//! matrix makes of every kernel's report, and the table printed from it. Pure: parsing and
//! rendering over data, tested without a kernel.

use serde::{Deserialize, Serialize};

/// The start of the checker's one machine line on standard output: `MARKER {json}`.
pub const MARKER: &str = "DETECTOR-KERNEL-CHECK";

/// The checker's result on one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// `uname -r` of the kernel it ran on.
    pub kernel: String,
    /// Why the sensors did not load (the whole error chain, the verifier's log included);
    /// `None` when they loaded.
    pub load_error: Option<String>,
    /// The build of the programs loaded (`typed`, `probe-read`); `None` when none loaded.
    #[serde(default)]
    pub variant: Option<String>,
    /// Each program of the sensors, attached or why not.
    pub programs: Vec<ProgramStatus>,
    /// Each check, in the order run.
    pub checks: Vec<CheckResult>,
}

/// One program of the sensors on one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    /// The program's name (as the eBPF object names it).
    pub name: String,
    /// It is attached to its hook.
    pub attached: bool,
    /// Why it is not attached.
    pub error: Option<String>,
    /// Instructions the verifier walked to accept it (its limit is 1,000,000).
    #[serde(default)]
    pub verified_instructions: Option<u32>,
    /// Not tried: the kernel lacks what the program needs (the error says what). Such a row
    /// still passes; the table says `n/a`.
    #[serde(default)]
    pub unsupported: bool,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check (`exec`, `file-write`...).
    pub name: String,
    /// It passed.
    pub ok: bool,
    /// What was seen, or why it failed (`not run` when the sensors did not load).
    pub detail: String,
}

impl CheckReport {
    /// Everything loaded, every program is attached and every check passed.
    pub fn passed(&self) -> bool {
        self.load_error.is_none()
            && self.programs.iter().all(|p| p.attached || p.unsupported)
            && !self.checks.is_empty()
            && self.checks.iter().all(|c| c.ok)
    }

    /// The machine line: [`MARKER`], a space, the report as JSON on one line.
    pub fn line(&self) -> String {
        // A report is strings and booleans only: serializing it cannot fail.
        let json = serde_json::to_string(self).unwrap_or_else(|err| {
            format!(r#"{{"kernel":"?","load_error":"cannot serialize the report: {err}","programs":[],"checks":[]}}"#)
        });
        format!("{MARKER} {json}")
    }

    /// The last report line in `output` (a guest's console, the checker's standard output),
    /// wherever the line starts (console noise before it on the same line is skipped).
    pub fn find(output: &str) -> Option<Result<Self, serde_json::Error>> {
        output.lines().rev().find_map(|line| {
            let at = line.find(&format!("{MARKER} {{"))?;
            let json = line[at + MARKER.len()..].trim();
            Some(serde_json::from_str(json))
        })
    }
}

/// One row of the matrix: a kernel booted in a guest, or the machine's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The row's name (`bullseye`, `host`...), as `--kernel` takes it.
    pub name: String,
    /// What the kernel is (`Debian 11 (bullseye), linux-image-amd64`).
    pub about: String,
    /// The kernel image package and its version, for a guest.
    pub package: Option<String>,
    /// Wall-clock seconds the row took (a guest's boot, check and power-off).
    pub seconds: f64,
    /// The guest's uptime in seconds when `/init` started the checker.
    pub boot_seconds: Option<f64>,
    /// Seconds the checker took (load and checks).
    pub check_seconds: Option<f64>,
    /// Why the row has no report, or why the harness failed it though it has one (the guest
    /// timed out, its checker left no report line...).
    pub error: Option<String>,
    /// The last lines of the guest's console, when the row failed.
    pub console_tail: Option<String>,
    /// The checker's report.
    pub report: Option<CheckReport>,
}

impl Row {
    /// A row not run yet: no times, no error, no report.
    pub fn new(name: String, about: String, package: Option<String>) -> Self {
        Self {
            name,
            about,
            package,
            seconds: 0.0,
            boot_seconds: None,
            check_seconds: None,
            error: None,
            console_tail: None,
            report: None,
        }
    }

    /// The harness saw no trouble and the report passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.report.as_ref().is_some_and(CheckReport::passed)
    }
}

/// The whole matrix, as written to `matrix.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    /// One row per kernel, in the order asked.
    pub rows: Vec<Row>,
    /// Seconds spent fetching kernels (zero when every one was cached).
    pub download_seconds: f64,
    /// Seconds spent building the initramfs.
    pub initramfs_seconds: f64,
    /// Wall-clock seconds of the whole run.
    pub total_seconds: f64,
}

impl Matrix {
    /// Rows that passed and rows that failed.
    pub fn counts(&self) -> (usize, usize) {
        let passed = self.rows.iter().filter(|r| r.passed()).count();
        (passed, self.rows.len() - passed)
    }
}

/// The longest a reason may be in a table cell; the whole of it is printed below the table.
const CELL_REASON: usize = 24;

/// The table (kernel | load | each program | each check) followed by every reason in full.
pub fn render(matrix: &Matrix) -> String {
    let mut programs: Vec<&str> = Vec::new();
    let mut checks: Vec<&str> = Vec::new();
    for report in matrix.rows.iter().filter_map(|r| r.report.as_ref()) {
        for program in &report.programs {
            if !programs.contains(&program.name.as_str()) {
                programs.push(&program.name);
            }
        }
        for check in &report.checks {
            if !checks.contains(&check.name.as_str()) {
                checks.push(&check.name);
            }
        }
    }
    let mut header = vec!["kernel".to_owned(), "load".to_owned()];
    header.extend(programs.iter().map(|p| (*p).to_owned()));
    header.extend(checks.iter().map(|c| (*c).to_owned()));
    header.push("row".to_owned());
    let mut table = vec![header];
    let mut reasons = Vec::new();
    for row in &matrix.rows {
        let release = row.report.as_ref().map_or("?", |r| r.kernel.as_str());
        let mut cells = vec![format!("{} {release}", row.name)];
        if let Some(error) = &row.error {
            reasons.push(format!("{}: {error}", row.name));
            if let Some(tail) = &row.console_tail {
                reasons.push(format!(
                    "{}: last lines of the console:\n{}",
                    row.name,
                    indent(tail)
                ));
            }
        }
        match &row.report {
            None => {
                cells.push("-".to_owned());
                cells.extend(programs.iter().chain(&checks).map(|_| "-".to_owned()));
            }
            Some(report) => {
                cells.push(match &report.load_error {
                    None => match &report.variant {
                        Some(variant) => format!("ok {variant}"),
                        None => "ok".to_owned(),
                    },
                    Some(error) => {
                        reasons.push(format!("{}: load: {error}", row.name));
                        format!("FAIL: {}", shorten(error))
                    }
                });
                for name in &programs {
                    cells.push(match report.programs.iter().find(|p| p.name == *name) {
                        None => "-".to_owned(),
                        Some(p) if p.attached => match p.verified_instructions {
                            Some(n) => format!("ok {}k", n.div_ceil(1000)),
                            None => "ok".to_owned(),
                        },
                        Some(p) if p.unsupported => {
                            let why = p.error.as_deref().unwrap_or("not on this kernel");
                            reasons.push(format!("{}: program {} n/a: {why}", row.name, p.name));
                            "n/a".to_owned()
                        }
                        Some(p) => {
                            let why = p.error.as_deref().unwrap_or("not attached");
                            reasons.push(format!("{}: program {}: {why}", row.name, p.name));
                            format!("no: {}", shorten(why))
                        }
                    });
                }
                for name in &checks {
                    cells.push(match report.checks.iter().find(|c| c.name == *name) {
                        None => "-".to_owned(),
                        Some(c) if c.ok && c.detail.starts_with("n/a") => "n/a".to_owned(),
                        Some(c) if c.ok => "ok".to_owned(),
                        Some(_) if report.load_error.is_some() => "not run".to_owned(),
                        Some(c) => {
                            reasons.push(format!("{}: check {}: {}", row.name, c.name, c.detail));
                            "FAIL".to_owned()
                        }
                    });
                }
            }
        }
        cells.push(if row.passed() { "PASS" } else { "FAIL" }.to_owned());
        table.push(cells);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join(" | ").trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("-|-"));
            out.push('\n');
        }
    }
    let (passed, failed) = matrix.counts();
    out.push_str(&format!(
        "\n{passed} kernel(s) passed, {failed} failed; downloads {:.1} s, initramfs {:.1} s, whole run {:.1} s\n",
        matrix.download_seconds, matrix.initramfs_seconds, matrix.total_seconds
    ));
    for row in &matrix.rows {
        let mut parts = Vec::new();
        if let Some(boot) = row.boot_seconds {
            parts.push(format!("boot {boot:.1} s"));
        }
        if let Some(check) = row.check_seconds {
            parts.push(format!("checker {check:.1} s"));
        }
        let parts = if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        };
        out.push_str(&format!("  {}: {:.1} s{parts}\n", row.name, row.seconds));
    }
    if !reasons.is_empty() {
        out.push_str("\nReasons:\n");
        for reason in reasons {
            out.push_str(&format!("- {reason}\n"));
        }
    }
    out
}

/// The first line of `reason`, cut to [`CELL_REASON`] characters.
fn shorten(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or_default();
    if line.chars().count() <= CELL_REASON {
        return line.to_owned();
    }
    let cut: String = line.chars().take(CELL_REASON - 3).collect();
    format!("{cut}...")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(load_error: Option<&str>, check_ok: bool) -> CheckReport {
        CheckReport {
            kernel: "6.12.0-1-amd64".into(),
            load_error: load_error.map(str::to_owned),
            variant: load_error.is_none().then(|| "typed".to_owned()),
            programs: if load_error.is_some() {
                Vec::new()
            } else {
                vec![ProgramStatus {
                    name: "sys_exit".into(),
                    attached: true,
                    error: None,
                    verified_instructions: Some(91_525),
                    unsupported: false,
                }]
            },
            checks: vec![CheckResult {
                name: "exec".into(),
                ok: check_ok,
                detail: if check_ok {
                    "seen".into()
                } else if load_error.is_some() {
                    "not run".into()
                } else {
                    "no exit event".into()
                },
            }],
        }
    }

    #[test]
    fn the_line_reads_back_after_console_noise() {
        let report = report(None, true);
        let console = format!(
            "[    1.0] booting\r\nnoise {}\r\nDETECTOR-GUEST checker exited 0\r\n",
            report.line()
        );
        let found = CheckReport::find(&console).unwrap().unwrap();
        assert_eq!(found, report);
        assert!(found.passed());
        // The shape the harness and the other tools read.
        let json: serde_json::Value = serde_json::from_str(
            report
                .line()
                .strip_prefix("DETECTOR-KERNEL-CHECK ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["load_error"], serde_json::Value::Null);
        assert_eq!(json["programs"][0]["attached"], true);
        assert_eq!(json["variant"], "typed");
        assert_eq!(json["programs"][0]["verified_instructions"], 91_525);
        assert_eq!(json["checks"][0]["name"], "exec");
        assert!(CheckReport::find("no line here\n").is_none());
    }

    #[test]
    fn a_load_failure_fails_the_row_and_its_reason_is_printed_in_full() {
        let long = "kernel BTF has no function bpf_rdonly_cast: the file sensor needs Linux 6.2";
        let matrix = Matrix {
            rows: vec![
                Row {
                    name: "bullseye".into(),
                    about: "Debian 11".into(),
                    package: Some("linux-image-5.10.0-32-amd64 5.10.223-1".into()),
                    seconds: 20.0,
                    boot_seconds: Some(5.0),
                    check_seconds: Some(1.0),
                    error: None,
                    console_tail: None,
                    report: Some(report(Some(long), false)),
                },
                Row {
                    name: "trixie".into(),
                    about: "Debian 13".into(),
                    package: None,
                    seconds: 60.0,
                    boot_seconds: None,
                    check_seconds: None,
                    error: None,
                    console_tail: None,
                    report: Some(report(None, true)),
                },
                Row {
                    name: "bookworm".into(),
                    about: "Debian 12".into(),
                    package: None,
                    seconds: 240.0,
                    boot_seconds: None,
                    check_seconds: None,
                    error: Some("no report within 240 s".into()),
                    console_tail: Some("Probing EDD".into()),
                    report: None,
                },
            ],
            download_seconds: 0.0,
            initramfs_seconds: 1.0,
            total_seconds: 300.0,
        };
        assert_eq!(matrix.counts(), (1, 2));
        let text = render(&matrix);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("kernel "), "{text}");
        assert!(lines[0].ends_with("| sys_exit | exec    | row"), "{text}");
        assert!(
            lines[2].contains("| FAIL: kernel BTF has no fun... |"),
            "{text}"
        );
        assert!(lines[2].contains("| -        | not run | FAIL"), "{text}");
        assert!(lines[3].contains("| ok typed "), "{text}");
        assert!(lines[3].ends_with("| ok 92k   | ok      | PASS"), "{text}");
        assert!(lines[4].starts_with("bookworm ? "), "{text}");
        assert!(
            lines[4].ends_with("| -                              | -        | -       | FAIL"),
            "{text}"
        );
        assert!(
            text.contains(&format!("- bullseye: load: {long}\n")),
            "{text}"
        );
        assert!(
            text.contains("- bookworm: no report within 240 s\n"),
            "{text}"
        );
        assert!(text.contains("    Probing EDD"), "{text}");
        assert!(text.contains("1 kernel(s) passed, 2 failed"), "{text}");
        assert!(
            text.contains("  bullseye: 20.0 s (boot 5.0 s, checker 1.0 s)\n"),
            "{text}"
        );
    }
}

//! Paths the kernel could not classify: lexical normalization, and the prefix classes applied
//! in user space as the kernel applies them.
//!
//! The kernel classifies a path by its bytes (a longest-prefix lookup), so `/tmp/../etc/shadow`
//! is under `/tmp` to it. An unlink, chmod, rename or failed write-open whose path holds a `.`
//! or `..` component is therefore reported whatever its class ([`detector_common::file_flags::DOT_COMPONENTS`]);
//! [`crate::decode`] normalizes it with [`lexical`], keeping what the kernel saw, and the
//! pipeline classifies it again with [`PathClasses`], dropping what is not sensitive after all.

use detector_common::{PATH_CLASS_KEY_BYTES, TOP_COMPONENTS, linux::SET_ID_BITS, path_class};

use crate::{
    config::{SensorsConfig, is_pattern},
    event::{FileActivity, FileOperation},
    sensors::path_class_entries,
};

/// `path` with the process's own `/proc` entry written as `/proc/self`: `/proc/<n>/...` where
/// `n` is one of `own` (its pid and thread id on the node, its pid in its own namespace; 0
/// for unknown is ignored). The kernel resolves `/proc/self` (and `/proc/thread-self`, to
/// `/proc/<pid>/task/<tid>`) to the number of the `/proc` instance's namespace, so the same
/// write reads `/proc/4242/oom_score_adj` on the node's `/proc` and `/proc/1/oom_score_adj` in
/// the container's. `None` when the path is not the process's own entry.
pub fn own_proc_entry(path: &str, own: [u32; 3]) -> Option<String> {
    let rest = path.strip_prefix("/proc/")?;
    let (number, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let n: u32 = number.parse().ok()?;
    if n == 0 || !own.contains(&n) || number.starts_with('0') {
        return None;
    }
    Some(if tail.is_empty() {
        "/proc/self".to_owned()
    } else {
        format!("/proc/self/{tail}")
    })
}

/// `path` with `.` and `..` components resolved and repeated separators removed, by its text
/// alone (a `..` above the root stays at the root, as in the kernel); `None` for a relative
/// path, which has nothing to resolve against.
///
/// The directory part of a path joined in the kernel has no symlinks (it is the kernel's own
/// resolution), so `..` right after it is exact; a `..` after a symlink in the argument is
/// resolved lexically, where the kernel would follow the link first.
pub fn lexical(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The configured prefix classes, as the kernel's trie holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathClasses {
    /// (key bytes, class bits), longest key first.
    entries: Vec<(Vec<u8>, u32)>,
    /// Read-sensitive patterns (`/home/*/.ssh`), by component.
    patterns: Vec<Vec<String>>,
}

impl PathClasses {
    /// The classes of `config`, the same entries the sensors give the kernel.
    pub fn new(config: &SensorsConfig) -> Self {
        let mut entries = path_class_entries(config);
        entries.sort_by_key(|(key, _)| std::cmp::Reverse(key.len()));
        let patterns = config
            .read_sensitive_paths
            .iter()
            .filter(|entry| is_pattern(entry))
            .map(|entry| {
                entry
                    .trim_end_matches('/')
                    .split('/')
                    .skip(1)
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        Self { entries, patterns }
    }

    /// Whether `path` matches a read-sensitive pattern as the kernel's prefilter decides it:
    /// its top [`TOP_COMPONENTS`] components one by one (`*` any), what lies below them too,
    /// and a fifth pattern component the file's own name.
    fn matches_pattern(&self, path: &str) -> bool {
        let components: Vec<&str> = path.split('/').skip(1).filter(|c| !c.is_empty()).collect();
        self.patterns.iter().any(|pattern| {
            let (top, leaf) = if pattern.len() > TOP_COMPONENTS {
                (&pattern[..TOP_COMPONENTS], pattern.last())
            } else {
                (&pattern[..], None)
            };
            components.len() >= pattern.len()
                && top
                    .iter()
                    .zip(&components)
                    .all(|(want, have)| want == "*" || want == have)
                && leaf.is_none_or(|leaf| components.last() == Some(&leaf.as_str()))
        })
    }

    /// The class bits of the longest configured prefix of `path`, compared as the kernel
    /// compares it: its first `PATH_CLASS_KEY_BYTES - 1` bytes, the NUL included when it fits.
    pub fn classify(&self, path: &str) -> u32 {
        let mut key = path.as_bytes().to_vec();
        key.push(0);
        key.truncate(PATH_CLASS_KEY_BYTES - 1);
        let mut class = self
            .entries
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .map_or(0, |&(_, class)| class);
        if self.matches_pattern(path) {
            class |= path_class::READ_SENSITIVE;
        }
        if path.ends_with("_history") {
            class |= path_class::LOG;
        }
        class
    }

    /// Classifies a file activity whose paths were normalized in user space again; false when,
    /// normalized, the kernel would not have reported it: excluded, or not sensitive (an open
    /// with write intent is reported anywhere). Others are left as they are.
    pub fn reclassify(&self, file: &mut FileActivity) -> bool {
        if file.original_path.is_none() && file.original_target.is_none() {
            return true;
        }
        let class = self.classify(&file.path)
            | file
                .target
                .as_deref()
                .map_or(0, |target| self.classify(target));
        file.sensitive = class & path_class::SENSITIVE_WRITE != 0;
        file.read_sensitive = class & path_class::READ_SENSITIVE != 0;
        file.log = class & path_class::LOG != 0;
        // What the kernel reports whatever the class: a write-open anywhere, a chmod setting
        // the setuid or setgid bit, the removal of a log, a path it could not resolve.
        let write_open = file.op == FileOperation::Open && file.write;
        let set_id = file.op == FileOperation::Chmod && file.flags & SET_ID_BITS != 0;
        let log_removed =
            file.log && !matches!(file.op, FileOperation::Open | FileOperation::Chmod);
        class & path_class::EXCLUDED == 0
            && (write_open
                || file.sensitive
                || file.read_sensitive
                || set_id
                || log_removed
                || file.unresolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_resolves_dot_components_by_text() {
        for (path, want) in [
            ("/tmp/../etc/shadow", Some("/etc/shadow")),
            ("/etc/./shadow", Some("/etc/shadow")),
            ("/etc//ssh/../shadow", Some("/etc/shadow")),
            ("/../../etc/passwd", Some("/etc/passwd")),
            ("/usr/bin/..", Some("/usr")),
            ("/", Some("/")),
            ("/..", Some("/")),
            ("/a/b/./c/", Some("/a/b/c")),
            ("../etc/shadow", None),
            ("shadow", None),
        ] {
            assert_eq!(lexical(path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn classes_match_the_longest_prefix_as_the_kernel_does() {
        let mut config = SensorsConfig::default();
        config.excluded_paths.push("/etc/detector-noise".into());
        let classes = PathClasses::new(&config);
        let class = |path| classes.classify(path);
        assert_ne!(class("/etc/shadow") & path_class::READ_SENSITIVE, 0);
        assert_ne!(class("/etc/shadow") & path_class::SENSITIVE_WRITE, 0);
        assert_eq!(class("/etc/shadowy") & path_class::READ_SENSITIVE, 0);
        assert_ne!(class("/etc/hosts") & path_class::SENSITIVE_WRITE, 0);
        assert_ne!(class("/etc/detector-noise/x") & path_class::EXCLUDED, 0);
        assert_eq!(class("/tmp/x"), 0);
        assert_eq!(
            class("/dev/null") & path_class::EXCLUDED,
            path_class::EXCLUDED
        );
        // Only the first bytes count: a path longer than the key under a configured prefix
        // keeps the prefix's class.
        let long = format!("/etc/{}", "a".repeat(2 * PATH_CLASS_KEY_BYTES));
        assert_ne!(class(&long) & path_class::SENSITIVE_WRITE, 0);
    }

    #[test]
    fn own_proc_entry_whatever_the_namespace() {
        let own = [4242, 4243, 7];
        assert_eq!(
            own_proc_entry("/proc/4242/oom_score_adj", own).as_deref(),
            Some("/proc/self/oom_score_adj")
        );
        // The container's /proc names the process by its pid in its own namespace.
        assert_eq!(
            own_proc_entry("/proc/7/task/7/comm", own).as_deref(),
            Some("/proc/self/task/7/comm")
        );
        // A thread's own number, and the entry itself.
        assert_eq!(
            own_proc_entry("/proc/4243", own).as_deref(),
            Some("/proc/self")
        );
        // Another process, a sysctl, something that only looks like a number.
        assert_eq!(own_proc_entry("/proc/1/oom_score_adj", own), None);
        assert_eq!(own_proc_entry("/proc/sys/kernel/core_pattern", own), None);
        assert_eq!(own_proc_entry("/proc/07/comm", [7, 7, 7]), None);
        assert_eq!(own_proc_entry("/proc/0/comm", [0, 1, 2]), None);
        assert_eq!(own_proc_entry("/procx/7/comm", own), None);
    }

    fn chmod(path: &str, original: Option<&str>) -> FileActivity {
        FileActivity {
            op: FileOperation::Chmod,
            path: path.into(),
            flags: 0o4755,
            write: false,
            sensitive: false,
            read_sensitive: false,
            relative: true,
            dirfd: Some(-100),
            path_truncated: false,
            target: None,
            suppressed: 0,
            result: Some(0),
            resolved: false,
            outside_root: false,
            joined: true,
            original_path: original.map(Into::into),
            original_target: None,
            self_path: None,
            log: false,
            unresolved: false,
            io_uring: false,
        }
    }

    #[test]
    fn normalized_log_removals_setid_chmods_and_history_are_kept() {
        let classes = PathClasses::new(&SensorsConfig::default());
        let mut unlink = chmod("/var/log/../log/app.log", Some("/var/log/./app.log"));
        unlink.op = FileOperation::Unlink;
        assert!(classes.reclassify(&mut unlink));
        assert!(unlink.log);
        let mut history = chmod("/root/.bash_history", Some("/tmp/../root/.bash_history"));
        history.op = FileOperation::Truncate;
        assert!(classes.reclassify(&mut history));
        assert!(history.log);
        let mut set_id = chmod("/tmp/x", Some("/tmp/./x"));
        set_id.flags = 0o4755;
        assert!(classes.reclassify(&mut set_id));
        let mut plain = chmod("/tmp/x", Some("/tmp/./x"));
        plain.flags = 0o755;
        assert!(!classes.reclassify(&mut plain));
        assert!(classes.classify("/proc/1/environ") & path_class::READ_SENSITIVE != 0);
        assert!(classes.classify("/proc/1/task/2/environ") & path_class::READ_SENSITIVE != 0);
        assert!(classes.classify("/home/a/.ssh/id_rsa") & path_class::READ_SENSITIVE != 0);
        assert_eq!(
            classes.classify("/proc/1/stat") & path_class::READ_SENSITIVE,
            0
        );
        assert_eq!(
            classes.classify("/home/a/app.js") & path_class::READ_SENSITIVE,
            0
        );
    }

    #[test]
    fn normalized_paths_are_classified_again_and_dropped_when_not_sensitive() {
        let classes = PathClasses::new(&SensorsConfig::default());
        let mut into = chmod("/usr/bin/bash", Some("/tmp/../usr/bin/bash"));
        assert!(classes.reclassify(&mut into));
        assert!(into.sensitive && !into.read_sensitive, "{into:?}");
        let mut out = chmod("/tmp/x", Some("/etc/../tmp/x"));
        (out.sensitive, out.flags) = (true, 0o755);
        assert!(!classes.reclassify(&mut out), "{out:?}");
        // An open with write intent is reported anywhere, unless excluded.
        let mut write = chmod("/tmp/x", Some("/etc/../tmp/x"));
        (write.op, write.write) = (FileOperation::Open, true);
        assert!(
            classes.reclassify(&mut write) && !write.sensitive,
            "{write:?}"
        );
        write.path = "/dev/null".into();
        assert!(!classes.reclassify(&mut write), "excluded: {write:?}");
        // Paths the kernel classified itself are left as they are.
        let mut kernel = chmod("/tmp/x", None);
        kernel.sensitive = true;
        assert!(classes.reclassify(&mut kernel) && kernel.sensitive);
    }
}

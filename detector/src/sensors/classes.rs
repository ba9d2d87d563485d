//! The prefix classes and the read-only prefilter the kernel is given, computed from the
//! configuration (pure; [`crate::paths`] applies the same entries in user space).

use std::collections::BTreeMap;

use detector_common::{
    NameWord, READ_PREFILTER_SLOTS, ReadPrefilter, TOP_COMPONENTS, TopComponents, path_class,
};

use crate::config::{SensorsConfig, is_pattern};

/// The LPM entries for the configured paths: `(prefix bytes, class bits)`.
///
/// A path entry `P` becomes `P\0` (the path itself) and `P/` (everything below it); an entry
/// ending in `*` becomes its bare prefix. Since the kernel returns only the longest match, each
/// entry also carries the bits of every shorter entry that is a prefix of it: a write to
/// `/etc/shadow` is both read-sensitive and a sensitive write. Read-sensitive patterns
/// (`/home/*/.ssh`) are not prefixes: the prefilter decides them ([`read_prefilter`]).
pub fn path_class_entries(config: &SensorsConfig) -> Vec<(Vec<u8>, u32)> {
    let mut own: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let lists = [
        (&config.sensitive_write_paths, path_class::SENSITIVE_WRITE),
        (&config.read_sensitive_paths, path_class::READ_SENSITIVE),
        (&config.log_paths, path_class::LOG),
        (&config.excluded_paths, path_class::EXCLUDED),
    ];
    for (list, class) in lists {
        for entry in list.iter().filter(|entry| !is_pattern(entry)) {
            if let Some(prefix) = entry.strip_suffix('*') {
                *own.entry(prefix.as_bytes().to_vec()).or_default() |= class;
                continue;
            }
            let path = entry.trim_end_matches('/');
            let mut exact = path.as_bytes().to_vec();
            exact.push(0);
            *own.entry(exact).or_default() |= class;
            let mut below = path.as_bytes().to_vec();
            below.push(b'/');
            *own.entry(below).or_default() |= class;
        }
    }
    own.iter()
        .map(|(key, &class)| {
            let inherited = own
                .iter()
                .filter(|(other, _)| other.len() < key.len() && key.starts_with(other))
                .fold(class, |acc, (_, &c)| acc | c);
            (key.clone(), inherited)
        })
        .collect()
}

/// The prefilter for read-only opens: the top [`TOP_COMPONENTS`] components of every
/// read-sensitive entry (`/var/run/secrets`: `var`, `run`, `secrets`), and for a deeper
/// pattern the file's own name; a pattern's entry decides. Too many distinct
/// entries disable it (every read-only open is then classified, and patterns never match).
pub fn read_prefilter(read_sensitive: &[String]) -> ReadPrefilter {
    let mut entries: Vec<TopComponents> = Vec::new();
    for entry in read_sensitive {
        let pattern = is_pattern(entry);
        let (bare, prefix) = match entry.strip_suffix('*') {
            Some(bare) if !pattern => (bare, true),
            _ => (entry.trim_end_matches('/'), false),
        };
        let components: Vec<&str> = bare.split('/').skip(1).collect();
        let word = |i: usize| match components.get(i) {
            Some(&"*") | None => NameWord::default(),
            // The last component of a `*` entry is a prefix of the name, not the name.
            Some(name) => name_word(name, !(prefix && i + 1 == components.len())),
        };
        let mut top = TopComponents {
            words: std::array::from_fn(word),
            leaf: NameWord::default(),
            decides: u32::from(pattern),
            _pad: 0,
        };
        if pattern && components.len() > TOP_COMPONENTS {
            top.leaf = word(components.len() - 1);
        }
        if !entries.contains(&top) {
            entries.push(top);
        }
    }
    let mut filter = ReadPrefilter {
        len: ReadPrefilter::DISABLED,
        _pad: 0,
        first_exact: 0,
        first_prefix: 0,
        entries: [TopComponents::default(); READ_PREFILTER_SLOTS],
    };
    if entries.len() <= READ_PREFILTER_SLOTS {
        filter.len = entries.len() as u32;
        filter.entries[..entries.len()].copy_from_slice(&entries);
    }
    for entry in &entries {
        let first = &entry.words[0];
        let byte = first.value as u8;
        if first.mask == 0 {
            // Any first component.
            filter.first_prefix = u64::MAX;
        } else if first.len == 0 {
            filter.first_prefix |= 1 << ReadPrefilter::prefix_bit(byte);
        } else {
            filter.first_exact |= 1 << ReadPrefilter::exact_bit(byte, first.len);
        }
    }
    filter
}

/// A component's first eight bytes; an `exact` one also fixes the length.
fn name_word(name: &str, exact: bool) -> NameWord {
    let n = name.len().min(8);
    let mut value = [0u8; 8];
    let mut mask = [0u8; 8];
    value[..n].copy_from_slice(&name.as_bytes()[..n]);
    mask[..n].fill(0xff);
    NameWord {
        value: u64::from_ne_bytes(value),
        mask: u64::from_ne_bytes(mask),
        len: if exact { name.len() as u32 } else { 0 },
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use detector_common::PATH_CLASS_KEY_BYTES;

    use super::*;

    fn class_of(entries: &[(Vec<u8>, u32)], path: &str) -> u32 {
        // The kernel's longest-prefix match over the path bytes and its NUL.
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        entries
            .iter()
            .filter(|(prefix, _)| bytes.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(0, |(_, class)| *class)
    }

    #[test]
    fn default_path_classes() {
        let entries = path_class_entries(&SensorsConfig::default());
        use path_class::*;
        assert_eq!(class_of(&entries, "/etc/passwd"), SENSITIVE_WRITE);
        assert_eq!(class_of(&entries, "/etc"), SENSITIVE_WRITE);
        assert_eq!(class_of(&entries, "/etcetera"), 0);
        assert_eq!(
            class_of(&entries, "/etc/shadow"),
            SENSITIVE_WRITE | READ_SENSITIVE
        );
        assert_eq!(
            class_of(&entries, "/var/run/secrets/kubernetes.io/token"),
            READ_SENSITIVE
        );
        assert_eq!(class_of(&entries, "/dev/shm/x"), SENSITIVE_WRITE);
        assert_ne!(class_of(&entries, "/dev/null") & EXCLUDED, 0);
        assert_ne!(class_of(&entries, "/dev/tty1") & EXCLUDED, 0);
        assert_ne!(class_of(&entries, "/dev/pts/3") & EXCLUDED, 0);
        assert_eq!(class_of(&entries, "/dev/nullx"), SENSITIVE_WRITE);
        assert_eq!(class_of(&entries, "/tmp/file"), 0);
        assert!(entries.iter().all(|(k, _)| k.len() < PATH_CLASS_KEY_BYTES));
    }

    /// What the kernel's prefilter (`prefilter` in `detector-ebpf/src/path.rs`) says of an
    /// absolute path: `None` turned away, `Some(false)` let through for the exact lookup,
    /// `Some(true)` decided read-sensitive by a pattern.
    fn prefilter_says(filter: &ReadPrefilter, path: &str) -> Option<bool> {
        let components: Vec<&str> = path.split('/').skip(1).filter(|c| !c.is_empty()).collect();
        let name = |c: Option<&&str>| {
            let c = c.copied().unwrap_or("");
            let mut bytes = [0u8; 8];
            let n = c.len().min(8);
            bytes[..n].copy_from_slice(&c.as_bytes()[..n]);
            (u64::from_ne_bytes(bytes), c.len() as u32)
        };
        let top: [(u64, u32); TOP_COMPONENTS] = std::array::from_fn(|i| name(components.get(i)));
        let leaf = name(components.last());
        let first = top[0];
        let exact = filter.first_exact >> ReadPrefilter::exact_bit(first.0 as u8, first.1) & 1;
        let prefix = filter.first_prefix >> ReadPrefilter::prefix_bit(first.0 as u8) & 1;
        if exact | prefix == 0 {
            return None;
        }
        let matches = |(word, len): (u64, u32), want: &NameWord| {
            word & want.mask == want.value && (want.len == 0 || want.len == len)
        };
        let mut may = None;
        for entry in &filter.entries[..filter.len as usize] {
            if top.iter().zip(&entry.words).all(|(&n, w)| matches(n, w))
                && matches(leaf, &entry.leaf)
            {
                if entry.decides != 0 {
                    return Some(true);
                }
                may = Some(false);
            }
        }
        may
    }

    fn passes(filter: &ReadPrefilter, path: &str) -> bool {
        prefilter_says(filter, path).is_some()
    }

    #[test]
    fn read_sensitive_patterns_are_decided_by_the_prefilter_alone() {
        let config = SensorsConfig::default();
        let entries = path_class_entries(&config);
        let filter = read_prefilter(&config.read_sensitive_paths);
        assert!(
            filter.len as usize <= READ_PREFILTER_SLOTS,
            "{}",
            filter.len
        );
        for path in [
            "/proc/1/environ",
            "/proc/self/environ",
            "/proc/1/task/1/environ",
            "/home/app/.ssh/id_ed25519",
            "/home/app/.ssh",
            "/home/app/.aws/credentials",
            "/home/u/.azure/accessTokens.json",
            "/home/u/.kube/config",
        ] {
            assert_eq!(prefilter_says(&filter, path), Some(true), "{path}");
            // Never in the prefix trie: only the prefilter knows patterns.
            assert_eq!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
        for path in [
            "/proc/1/stat",
            "/proc/self/status",
            "/proc/1/task/1/stat",
            "/home/app/server.js",
            "/home/app/.config/app.json",
            "/home/app",
            "/home/app/.sshx",
        ] {
            assert_ne!(prefilter_says(&filter, path), Some(true), "{path}");
            assert_eq!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
        for path in [
            "/root/.aws/credentials",
            "/root/.config/gcloud/x",
            "/root/.kube/config",
        ] {
            assert_eq!(prefilter_says(&filter, path), Some(false), "{path}");
            assert_ne!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
    }

    #[test]
    fn log_paths_are_classed_as_logs_and_patterns_stay_out_of_the_trie() {
        let config = SensorsConfig::default();
        let entries = path_class_entries(&config);
        assert_ne!(class_of(&entries, "/var/log/app.log") & path_class::LOG, 0);
        assert_ne!(class_of(&entries, "/var/log") & path_class::LOG, 0);
        assert_eq!(class_of(&entries, "/var/logs/x") & path_class::LOG, 0);
        assert!(entries.iter().all(|(key, _)| !key.contains(&b'*')));
    }

    #[test]
    fn read_prefilter_lets_every_read_sensitive_path_through_and_little_else() {
        let config = SensorsConfig::default();
        let entries = path_class_entries(&config);
        let filter = read_prefilter(&config.read_sensitive_paths);
        assert!(filter.len as usize <= READ_PREFILTER_SLOTS);
        for path in [
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/run/secrets/x",
            "/root/.ssh/id_rsa",
            "/root/.ssh",
            "/etc/shadow",
            "/etc/sudoers",
            "/etc/kubernetes/admin.conf",
            "/var/lib/kubelet/pki",
        ] {
            assert!(passes(&filter, path), "{path}");
            assert_ne!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
        for path in [
            "/tmp/file",
            "/usr/lib/libc.so.6",
            "/home/a",
            "/etc/ld.so.cache",
            "/etc/passwd",
            "/etc/shadowy",
            "/var/log/syslog",
            "/root/.bashrc",
            "/proc/self/stat",
            "/",
        ] {
            assert!(!passes(&filter, path), "{path}");
        }
    }

    #[test]
    fn read_prefilter_entries_with_a_star_match_prefixes_of_names() {
        let entries = [
            "/etc/shad*".to_owned(),
            "/opt/*".to_owned(),
            "/sec*".to_owned(),
        ];
        let filter = read_prefilter(&entries);
        assert_eq!(filter.len, 3);
        for path in ["/etc/shadow", "/etc/shad", "/opt/x/y", "/secrets", "/sec"] {
            assert!(passes(&filter, path), "{path}");
        }
        for path in ["/etc/sha", "/se", "/etc/passwd", "/op"] {
            assert!(!passes(&filter, path), "{path}");
        }
    }

    #[test]
    fn long_components_are_compared_by_their_first_bytes_and_length() {
        let filter = read_prefilter(&["/etc/kubernetes".to_owned()]);
        assert!(passes(&filter, "/etc/kubernetes/pki"));
        assert!(!passes(&filter, "/etc/kubernetesX"));
        // Same first eight bytes and length: let through, the exact lookup decides.
        assert!(passes(&filter, "/etc/kubernetez"));
    }

    #[test]
    fn an_entry_for_everything_lets_every_path_through() {
        let filter = read_prefilter(&["/*".to_owned()]);
        for path in ["/tmp/x", "/", "/etc/passwd"] {
            assert!(passes(&filter, path), "{path}");
        }
    }

    #[test]
    fn too_many_read_sensitive_prefixes_disable_the_prefilter() {
        let paths: Vec<String> = (0..40).map(|i| format!("/s{i:02}")).collect();
        assert_eq!(read_prefilter(&paths).len, ReadPrefilter::DISABLED);
    }

    #[test]
    fn no_read_sensitive_prefix_means_no_look_at_read_only_opens() {
        // The kernel leaves read-only opens before the current task is even looked up when
        // `len` is 0.
        assert_eq!(read_prefilter(&[]).len, 0);
    }
}

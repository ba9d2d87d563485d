//! cgroup paths and the files they come from: any text parses into a pod and container, or
//! "not a container", never a panic. What is found is well formed and comes from the path: a
//! container id is 64 hex digits and a component's (or its suffix), a pod uid has a pod uid's
//! shape. Evidence capture finds a container wherever attribution does (both read the same
//! paths), and the `/proc/<pid>/cgroup` and mountinfo readers return what the text holds.
//!
//! The input is tried as a cgroup path, as `/proc/<pid>/cgroup` text and as mountinfo text.
#![no_main]

use detector::{
    attribution::cgroup_path::{self, NotContainer},
    cgroup,
    evidence::runtime,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_path(text);
    if let Some(path) = cgroup_path::path_from_proc_cgroup(text) {
        assert!(
            text.lines().any(|line| line.ends_with(path)),
            "{path:?} is no line's path"
        );
        check_path(path);
    }
    if let Some(path) = cgroup::parse_unified_cgroup(text) {
        let path = path.to_str().expect("a path from text is text");
        assert!(text.contains(path), "{path:?} is not in the text");
        check_path(path);
    }
    let _ = cgroup::parse_cgroup2_mount(text);
    let _ = cgroup::is_container_root(text);
});

fn check_path(path: &str) {
    let components: Vec<&str> = path.split('/').collect();
    let identity = match cgroup_path::parse(path) {
        Ok(identity) => Some(identity),
        Err(NotContainer::MalformedPodUid(part)) => {
            assert!(
                components.contains(&part.as_str()),
                "{part:?} not in {path:?}"
            );
            None
        }
        Err(_) => None,
    };
    let hint = runtime::detect(path);
    if let Some(hint) = &hint {
        assert_container_id(&hint.container_id, &components, path);
    }
    let Some(identity) = identity else {
        return;
    };
    if let Some(container) = &identity.container {
        assert_container_id(&container.id, &components, path);
        assert!(
            container.id.bytes().all(|b| !b.is_ascii_uppercase()),
            "{:?} of {path:?} is not lowercase",
            container.id
        );
        assert!(
            hint.is_some(),
            "attribution finds container {} in {path:?}, evidence capture none",
            container.id
        );
    }
    if let Some(pod) = &identity.pod {
        let uid = &pod.uid;
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        let groups: Vec<usize> = uid.split('-').map(str::len).collect();
        assert!(
            (uid.len() == 32 && hex(uid))
                || (groups == [8, 4, 4, 4, 12] && uid.split('-').all(hex)),
            "pod uid {uid:?} of {path:?} is not a pod uid"
        );
        assert!(
            path.contains(uid.as_str()) || path.contains(&uid.replace('-', "_")),
            "pod uid {uid:?} is not in {path:?}"
        );
    }
}

/// A container id is 64 hex digits ending a component of the path.
fn assert_container_id(id: &str, components: &[&str], path: &str) {
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "container id {id:?} of {path:?} is not 64 hex digits"
    );
    assert!(
        components
            .iter()
            .any(|c| c.strip_suffix(".scope").unwrap_or(c).ends_with(id)),
        "container id {id:?} ends no component of {path:?}"
    );
}

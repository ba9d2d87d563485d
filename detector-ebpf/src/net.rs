//! Network activity: outbound connects (`cgroup/connect4`, `cgroup/connect6`) and egress volume
//! per cgroup (`cgroup_skb/egress`). Attached at the cgroup2 root, they see every cgroup.
//!
//! The same hooks enforce the network quarantine, whatever the CNI does: a quarantined cgroup's
//! connects fail at once with `EPERM`, and its packets are dropped on egress and on ingress
//! (`cgroup_skb/ingress`), which also cuts connections established before the quarantine.

use aya_ebpf::{
    helpers::generated::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::PerCpuHashMap,
    programs::{SkBuffContext, SockAddrContext},
};
use detector_common::{ConnectEvent, EventKind, Stat, TrafficCounters};

use crate::common::{
    EVENTS, count, count_lost, current_cgroup_watched, current_quarantined, current_tgid,
    fill_header, is_daemon, quarantined, wakeup_flags,
};

/// Egress bytes and packets per cgroup id, summed over CPUs by user space.
#[map(name = "EGRESS")]
static EGRESS: PerCpuHashMap<u64, TrafficCounters> = PerCpuHashMap::with_max_entries(16384, 0);

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Return value that lets the operation proceed.
const ALLOW: i32 = 1;
/// Return value that refuses it: `EPERM` for a connect, a drop for a packet.
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET6) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: u32) -> Result<i32, i32> {
    if is_daemon(current_tgid()) {
        return Ok(ALLOW);
    }
    let blocked = current_quarantined();
    let verdict = if blocked {
        count(Stat::QuarantineDenies);
        DENY
    } else {
        ALLOW
    };
    if !current_cgroup_watched() {
        return Ok(verdict);
    }
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost(EventKind::Connect);
        return Ok(verdict);
    };
    // SAFETY: the reservation is exclusively ours; every field is written before submission.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: the context pointer is valid for the program's run; fields are read one u32 at a
    // time, the access size the verifier allows for `bpf_sock_addr`.
    let sa = unsafe { &*ctx.sock_addr };
    fill_header(&mut event.header, EventKind::Connect);
    event.family = family;
    event.protocol = sa.protocol;
    event.dport = u32::from(u16::from_be(sa.user_port as u16));
    event.blocked = u32::from(blocked);
    event.daddr = [0; 16];
    if family == AF_INET {
        event.daddr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        let words = [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ];
        for (i, word) in words.iter().enumerate() {
            event.daddr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    entry.submit(wakeup_flags());
    Ok(verdict)
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    if skb_quarantined(&ctx) {
        count(Stat::QuarantineDrops);
        return DENY;
    }
    count_egress(&ctx);
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    if skb_quarantined(&ctx) {
        count(Stat::QuarantineDrops);
        return DENY;
    }
    ALLOW
}

/// Whether the socket of the packet belongs to a quarantined cgroup.
#[inline(always)]
fn skb_quarantined(ctx: &SkBuffContext) -> bool {
    let skb = ctx.skb.skb.cast();
    // SAFETY: the helpers take the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    quarantined(cgroup_id, |level| unsafe {
        bpf_skb_ancestor_cgroup_id(skb, level)
    })
}

#[inline(always)]
fn count_egress(ctx: &SkBuffContext) {
    // SAFETY: the helper takes the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb.cast()) };
    let bytes = u64::from(ctx.len());
    if let Some(counters) = EGRESS.get_ptr_mut(cgroup_id) {
        // SAFETY: a per-CPU value, touched only on this CPU.
        let counters = unsafe { &mut *counters };
        counters.bytes += bytes;
        counters.packets += 1;
    } else {
        let counters = TrafficCounters { bytes, packets: 1 };
        // From a program, an update of a per-CPU hash writes this CPU's slot only, so an insert
        // racing with another CPU's loses nothing.
        let _ = EGRESS.insert(cgroup_id, counters, 0);
    }
}

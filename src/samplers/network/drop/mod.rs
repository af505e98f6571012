//! `network_drop`: packets the kernel dropped, by drop reason.
//!
//! Hook: `tp_btf/kfree_skb`, which fires for drops only (a normal free is
//! `skb:consume_skb`, not counted). Emits `network_drop{reason}`, summed over
//! CPUs. Reason names are the members of the running kernel's
//! `enum skb_drop_reason` (read from its BTF, `/sys/kernel/btf/vmlinux`)
//! without the `SKB_DROP_REASON_` prefix, as tracefs prints them: a newer
//! kernel's reasons come out under their own names with no change here.
//! Reasons the kernel numbers 255 or above (subsystem-specific ones, such as
//! mac80211's or openvswitch's) are summed under `reason="other"`. Every
//! reason is served from start, at zero until its first drop.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/network_drop.skel.rs"));
}

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, classify, load_path, open_skel, possible_cpus, tracepoint_arg_count,
    BankCounter, MmapArray,
};
use crate::metrics::MetricDef;
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::Unsupported;

pub static NETWORK_DROP: MetricDef = MetricDef::counter(
    "network_drop",
    "packets",
    "Packets dropped by the kernel, by drop reason (`enum skb_drop_reason` names; `other` for subsystem reasons)",
)
.labels(&["reason"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "network_drop",
    source: Source::Bpf("tp_btf/kfree_skb"),
    options: &[],
    metrics: || vec![&NETWORK_DROP],
    init,
};

/// Counter slots per CPU bank (`REASON_SLOTS` in network_drop.bpf.c); the
/// last one, [`OTHER`], holds every reason numbered at or above it.
const REASON_SLOTS: usize = 256;
const OTHER: usize = REASON_SLOTS - 1;

/// Enum members that are not drops: `SKB_NOT_DROPPED_YET` and `SKB_CONSUMED`
/// lack the prefix, `MAX` is the enum's bound.
const NOT_REASONS: [&str; 1] = ["MAX"];

/// The label of each counter slot, from the members of
/// `enum skb_drop_reason` as (name, value): `SKB_DROP_REASON_X` becomes `X`
/// in slot `value`; members without that prefix and `MAX` are not drop
/// reasons; values past the last slot fall into `other`, which is always
/// listed last. Slots are in ascending order.
pub fn reason_slots<'a>(
    members: impl IntoIterator<Item = (&'a [u8], i64)>,
) -> Vec<(usize, String)> {
    let mut slots: Vec<(usize, String)> = members
        .into_iter()
        .filter_map(|(name, value)| {
            let reason = name.strip_prefix(b"SKB_DROP_REASON_")?;
            let slot = usize::try_from(value).ok().filter(|&v| v < OTHER)?;
            let reason = crate::source::label_value(reason);
            (!NOT_REASONS.contains(&reason.as_str())).then_some((slot, reason))
        })
        .collect();
    slots.sort();
    slots.dedup_by_key(|(slot, _)| *slot);
    slots.push((OTHER, "other".to_string()));
    slots
}

/// The kernel's drop reasons by slot, from the BTF in use (the kernel's
/// own, or `[general] btf`); `None` when it has no `enum skb_drop_reason`
/// (kernels before drop reasons).
fn kernel_reasons(ctx: &SamplerContext) -> Result<Option<Vec<(usize, String)>>, Unsupported> {
    use libbpf_rs::btf::{types::Enum, Btf};
    use std::os::unix::ffi::OsStrExt;
    let btf = match &ctx.btf {
        Some(path) => Btf::from_path(path),
        None => Btf::from_vmlinux(),
    }
    .map_err(|e| Unsupported(format!("reading the kernel's BTF for drop reasons: {e}")))?;
    let Some(reasons) = btf.type_by_name::<Enum<'_>>("skb_drop_reason") else {
        return Ok(None);
    };
    let members: Vec<(&[u8], i64)> = reasons
        .iter()
        .filter_map(|m| Some((m.name?.as_bytes(), m.value)))
        .collect();
    Ok(Some(reason_slots(members)))
}

/// The slot every drop counts in where the kernel gives no reason: that of
/// `NOT_SPECIFIED` (2 in every kernel that has reasons).
const UNSPECIFIED: usize = 2;

struct NetworkDrop {
    _skel: bpf::NetworkDropSkel<'static>,
    banks: MmapArray,
    counters: Vec<BankCounter>,
    scratch: Vec<u64>,
    method: String,
}

/// Opens and loads the program of one path.
fn load(ctx: &SamplerContext, compat: bool) -> anyhow::Result<bpf::NetworkDropSkel<'static>> {
    let mut open = open_skel(
        bpf::NetworkDropSkelBuilder::default(),
        ctx,
        compat,
        "opening the network_drop BPF object",
    )?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow::anyhow!("the network_drop BPF object has no .rodata"))?;
    // kernels before drop reasons pass kfree_skb no reason (two arguments)
    rodata.kfree_skb_has_reason = tracepoint_arg_count(ctx, "kfree_skb") >= Some(3);
    rodata.unspecified_reason = UNSPECIFIED as u32;
    open.maps
        .drops
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the drop counter banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the network_drop BPF program"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to kfree_skb"))?;
    Ok(skel)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let reasons = kernel_reasons(ctx)?;
    let (skel, method) = load_path(ctx, "tp_btf/kfree_skb", "raw_tp/kfree_skb", |compat| {
        if !compat && reasons.is_none() {
            return Err(Unsupported(
                "the kernel's BTF has no enum skb_drop_reason (needs Linux 5.17 or later)".into(),
            )
            .into());
        }
        load(ctx, compat)
    })?;
    let (reasons, method) = match reasons {
        Some(reasons) => (reasons, method),
        None => (
            vec![(UNSPECIFIED, "NOT_SPECIFIED".to_string())],
            format!("{method}; the BTF in use has no enum skb_drop_reason (a kernel before 5.17, or BTF of another kernel): every drop counts as NOT_SPECIFIED"),
        ),
    };
    let banks = MmapArray::new(&skel.maps.drops)?;
    let counters = reasons
        .iter()
        .map(|(slot, reason)| BankCounter::new(&NETWORK_DROP, &[("reason", reason)], *slot, None))
        .collect();
    Ok(Box::new(NetworkDrop {
        _skel: skel,
        banks,
        counters,
        scratch: Vec::new(),
        method,
    }))
}

impl Sampler for NetworkDrop {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for counter in &self.counters {
            counter.emit(&self.banks, &[], &mut self.scratch, out);
        }
        Ok(())
    }

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_named_by_slot_with_other_last() {
        let members: Vec<(&[u8], i64)> = vec![
            (b"SKB_NOT_DROPPED_YET", 0),
            (b"SKB_CONSUMED", 1),
            (b"SKB_DROP_REASON_NOT_SPECIFIED", 2),
            (b"SKB_DROP_REASON_NO_SOCKET", 3),
            (b"SKB_DROP_REASON_NETFILTER_DROP", 12),
            (b"SKB_DROP_REASON_MAX", 128),
            // a subsystem reason and a name with a byte that needs escaping
            (b"SKB_DROP_REASON_SUBSYS_X", 1 << 16),
            (b"SKB_DROP_REASON_ODD\xff", 40),
        ];
        let slots = reason_slots(members);
        assert_eq!(
            slots,
            vec![
                (2, "NOT_SPECIFIED".to_string()),
                (3, "NO_SOCKET".to_string()),
                (12, "NETFILTER_DROP".to_string()),
                (40, "ODD\\xff".to_string()),
                (OTHER, "other".to_string()),
            ]
        );
    }

    #[test]
    fn slot_count_matches_the_bpf_program() {
        let source = include_str!("network_drop.bpf.c");
        assert!(source.contains(&format!("#define REASON_SLOTS {REASON_SLOTS}")));
    }
}

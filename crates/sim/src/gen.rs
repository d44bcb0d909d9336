//! Generates large synthetic fleets for benchmarks and the `gen-fleet` example.

use std::fmt::Write;

/// Shape of a generated fleet.
#[derive(Debug, Clone, Copy)]
pub struct GenOptions {
    pub nodes: usize,
    /// Service memberships per node.
    pub memberships: usize,
    /// Members per service.
    pub service_size: usize,
    /// Update domains the nodes are dealt into in turn; 0 for none (no `update_domain` key).
    pub update_domains: usize,
    /// Fault domains; 0 for none.
    pub fault_domains: usize,
    /// Deal each membership layer's members at random (this seed) instead of by stride: the
    /// services then meet the update domains unevenly, as real ones do.
    pub shuffle: Option<u64>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            nodes: 1000,
            memberships: 10,
            service_size: 100,
            update_domains: 10,
            fault_domains: 3,
            shuffle: None,
        }
    }
}

/// A fleet as JSON text (the schema of DESIGN.md §Formats). Each of `memberships` layers splits
/// the nodes into services of `service_size` members, through a different stride per layer, so
/// services overlap the way real role, rack and quorum groups do. Every service allows 10% down.
pub fn fleet_json(o: &GenOptions) -> String {
    let n = o.nodes.max(1);
    let mut s = String::with_capacity(n * (40 + 10 * o.memberships) + 1024);
    s.push_str(
        "{\"name\":\"generated\",\"versions\":[\"1.0\",\"1.1\"],\"functional_level\":\"1.0\",\"node\":[",
    );
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{{\"name\":\"n{i:06}\"");
        if o.update_domains > 0 {
            let _ = write!(s, ",\"update_domain\":{}", i % o.update_domains);
        }
        if o.fault_domains > 0 {
            let _ = write!(s, ",\"fault_domain\":{}", (i / o.update_domains.max(1)) % o.fault_domains);
        }
        s.push_str(",\"version\":\"1.0\"}");
    }
    s.push_str("],\"service\":[");
    let size = o.service_size.clamp(1, n);
    let per_layer = n.div_ceil(size);
    let strides = [
        1usize,
        7919,
        104_729,
        1_299_709,
        15_485_863,
        179_424_673,
        2_038_074_743,
        27_644_437,
        613_651_349,
        49_979_687,
    ];
    let mut first = true;
    for layer in 0..o.memberships {
        let mut stride = strides[layer % strides.len()] % n;
        while stride == 0 || gcd(stride, n) != 1 {
            stride += 1;
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::with_capacity(size); per_layer];
        match o.shuffle {
            None => {
                for i in 0..n {
                    let key = (i * stride + layer) % n;
                    groups[key / size].push(i);
                }
            }
            Some(seed) => {
                // Fisher-Yates over SplitMix64, so a seed gives the same fleet everywhere.
                let mut state = seed ^ (layer as u64).wrapping_mul(super::GOLDEN);
                let mut next = move || {
                    let out = super::splitmix(state);
                    state = state.wrapping_add(super::GOLDEN);
                    out
                };
                let mut perm: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    perm.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                for (key, &i) in perm.iter().enumerate() {
                    groups[key / size].push(i);
                }
            }
        }
        for (g, members) in groups.iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            if !first {
                s.push(',');
            }
            first = false;
            let _ = write!(s, "{{\"name\":\"s{layer}-{g}\",\"max_unavailable\":\"10%\",\"nodes\":[");
            for (j, m) in members.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                let _ = write!(s, "\"n{m:06}\"");
            }
            s.push_str("]}");
        }
    }
    s.push_str("]}");
    s
}

/// A campaign for a generated fleet.
pub fn campaign_toml(max_parallel: &str) -> String {
    format!(
        "name = \"to-1.1\"\ntarget_version = \"1.1\"\nmax_parallel = \"{max_parallel}\"\nmax_failed_nodes = 5\n"
    )
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

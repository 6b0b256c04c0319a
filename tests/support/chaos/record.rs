//! The simulator's record of generate calls (`GET /_sim/generations`): what was charged, and what was charged twice.

use super::*;

/// Every generate call the simulator accepted (charged, or replayed from its Idempotency-Key
/// cache), in order: what `GET /_sim/generations` answers.
pub fn sim_generations(sim: &SimHandle) -> Vec<GenerationRecord> {
    sim.generations()
}

/// Charged generate calls (accepted, not replayed) for `agent`.
pub fn charged_for<'a>(
    records: &'a [GenerationRecord],
    agent: &'a str,
) -> impl Iterator<Item = &'a GenerationRecord> + 'a {
    records
        .iter()
        .filter(move |r| r.agent_id == agent && !r.replayed)
}

/// (agent, body) pairs charged more than once: each one a user change bought twice.
pub fn duplicates(records: &[GenerationRecord]) -> Vec<(String, String, Vec<u64>)> {
    let mut seen: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.replayed) {
        // serde_json's map is ordered, so equal bodies serialise equally.
        seen.entry((r.agent_id.clone(), r.body.to_string()))
            .or_default()
            .push(r.seq);
    }
    seen.into_iter()
        .filter(|(_, seqs)| seqs.len() > 1)
        .map(|((agent, body), seqs)| (agent, body, seqs))
        .collect()
}

//! Who owns an agent when several objects name it. Two owners would fight over the agent and
//! pay twice, so exactly one object may act for an agent; every other one is in Conflict.
//! One pure rule for the controller and the file mode, plus `AgentClaims`, which makes the rule
//! atomic inside a process: an object takes its agent's claim right before its first generate
//! call, so two objects whose views raced (a cache that lags by one object) cannot both buy.

use std::collections::HashMap;

use jiff::Timestamp;

use crate::resource::AgentDynamicsStatus;

/// One object naming an agent, as the ownership rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// namespace/name.
    pub key: String,
    /// It has already sent something for the agent (a generation, or a call pending).
    pub acted: bool,
    /// Creation time; unknown (file mode, first apply) sorts after any known time.
    pub created: Option<Timestamp>,
    /// Objects being deleted, or only observing (`managementPolicy: Observe`), own nothing.
    pub deleting: bool,
}

impl Claimant {
    pub fn new(
        key: String,
        status: Option<&AgentDynamicsStatus>,
        created: Option<Timestamp>,
        deleting: bool,
    ) -> Self {
        Claimant {
            key,
            acted: status.is_some_and(acted),
            created,
            deleting,
        }
    }

    /// Lower ranks own: the object already at work, then the oldest, then by namespace/name.
    /// Creation times have one-second resolution, so a newer object must never win a tie
    /// against one that is already at work.
    fn rank(&self) -> (bool, bool, Option<Timestamp>, &str) {
        (!self.acted, self.created.is_none(), self.created, &self.key)
    }
}

/// Whether a status shows that its object has sent something for its agent.
pub fn acted(status: &AgentDynamicsStatus) -> bool {
    status.generations > 0 || status.generate_hash.is_some() || status.pending_generation.is_some()
}

/// The key of the object that owns the agent instead of `me`, if any. `others` are the other
/// objects naming the same agent (`me` among them is ignored).
pub fn owner_instead_of(me: &Claimant, others: &[Claimant]) -> Option<String> {
    others
        .iter()
        .filter(|o| o.key != me.key && !o.deleting)
        .filter(|o| o.rank() < me.rank())
        .min_by(|a, b| a.rank().cmp(&b.rank()))
        .map(|o| o.key.clone())
}

/// Which object of this process holds each agent; taken before a generate call.
#[derive(Debug, Default)]
pub struct AgentClaims {
    holder: HashMap<String, String>,
}

impl AgentClaims {
    /// Take (or keep) `agent` for `key`; `Err(holder)` when another object holds it.
    pub fn claim(&mut self, agent: &str, key: &str) -> Result<(), String> {
        match self.holder.get(agent) {
            Some(holder) if holder != key => Err(holder.clone()),
            Some(_) => Ok(()),
            None => {
                self.holder.insert(agent.to_string(), key.to_string());
                Ok(())
            }
        }
    }

    /// The object is gone: its agent is free for another.
    pub fn release(&mut self, key: &str) {
        self.holder.retain(|_, holder| holder != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, acted: bool, created: Option<i64>) -> Claimant {
        Claimant {
            key: key.into(),
            acted,
            created: created.map(|s| Timestamp::from_second(s).unwrap()),
            deleting: false,
        }
    }

    #[test]
    fn ownership_rule_as_a_table() {
        // (name, me, others, owner instead of me)
        let rows: Vec<(&str, Claimant, Vec<Claimant>, Option<&str>)> = vec![
            ("alone: owns", c("a/x", false, Some(100)), vec![], None),
            (
                "older owns",
                c("b/new", false, Some(200)),
                vec![c("a/old", false, Some(100))],
                Some("a/old"),
            ),
            (
                "newer does not",
                c("a/old", false, Some(100)),
                vec![c("b/new", false, Some(200))],
                None,
            ),
            (
                "at work beats older",
                c("a/old", false, Some(100)),
                vec![c("b/busy", true, Some(200))],
                Some("b/busy"),
            ),
            (
                "same second: by name",
                c("a/y", false, Some(100)),
                vec![c("a/x", false, Some(100))],
                Some("a/x"),
            ),
            (
                "same second, at work beats name",
                c("a/intruder", false, Some(100)),
                vec![c("a/owner", true, Some(100))],
                Some("a/owner"),
            ),
            (
                "unknown creation sorts last",
                c("a/a", false, None),
                vec![c("z/z", false, Some(100))],
                Some("z/z"),
            ),
            (
                "file mode, both new: by name",
                c("a/b", false, None),
                vec![c("a/a", false, None)],
                Some("a/a"),
            ),
            (
                "a deleting object owns nothing",
                c("b/new", false, Some(200)),
                vec![Claimant {
                    deleting: true,
                    ..c("a/old", true, Some(100))
                }],
                None,
            ),
            (
                "itself is ignored",
                c("a/x", false, Some(100)),
                vec![c("a/x", false, Some(100))],
                None,
            ),
        ];
        for (name, me, others, want) in rows {
            assert_eq!(owner_instead_of(&me, &others).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn the_first_claim_wins_until_released() {
        let mut claims = AgentClaims::default();
        assert_eq!(claims.claim("A1", "a/x"), Ok(()));
        assert_eq!(claims.claim("A1", "a/x"), Ok(()), "the holder keeps it");
        assert_eq!(claims.claim("A1", "a/y"), Err("a/x".to_string()));
        assert_eq!(claims.claim("A2", "a/y"), Ok(()));
        claims.release("a/x");
        assert_eq!(claims.claim("A1", "a/y"), Ok(()));
    }
}

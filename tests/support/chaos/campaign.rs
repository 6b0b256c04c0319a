//! The campaign: seeded kills, failpoints, faults and edits, and its oracle.

use super::*;

#[derive(Debug, Clone)]
pub struct CampaignConfig {
    pub seed: u64,
    /// SIGKILLs sent to operator replicas (failpoint exits come on top).
    pub kills: usize,
    pub objects: usize,
    /// Time between two SIGKILLs, drawn uniformly.
    pub kill_interval: (Duration, Duration),
    /// Time between two user actions (edit, delete), drawn uniformly.
    pub edit_interval: (Duration, Duration),
    /// kube-apiserver restarts, spread over the kills (at least one).
    pub apiserver_restarts: usize,
    /// Probability of each failpoint per crossing, in the chaos phase.
    pub failpoint_rate: f64,
    /// Share of simulator calls that get a fault, in the chaos phase.
    pub fault_rate: f64,
    pub idle: Duration,
    pub converge_timeout: Duration,
    pub operator_binary: PathBuf,
    /// Operator logs go here (kept); `None`: a temp dir, removed at the end.
    pub log_dir: Option<PathBuf>,
    /// Print progress lines to stderr.
    pub verbose: bool,
}

impl CampaignConfig {
    /// The test suite's short campaign.
    pub fn short(seed: u64, operator_binary: PathBuf) -> Self {
        CampaignConfig {
            seed,
            kills: 50,
            objects: 8,
            kill_interval: (Duration::from_millis(600), Duration::from_millis(2400)),
            edit_interval: (Duration::from_millis(300), Duration::from_millis(1500)),
            apiserver_restarts: 1,
            failpoint_rate: 0.2,
            fault_rate: 0.3,
            idle: Duration::from_secs(15),
            converge_timeout: Duration::from_secs(120),
            operator_binary,
            log_dir: None,
            verbose: true,
        }
    }

    /// Operator flags: short windows and retries so a campaign converges in seconds.
    pub fn operator_args(&self, namespace: &str) -> Vec<String> {
        [
            "--leader-elect",
            "--lease-name",
            "chaos",
            "--lease-namespace",
            namespace,
            "--lease-duration",
            "2",
            "--api-timeout",
            "2s",
            "--poll-min",
            "200ms",
            "--poll-max",
            "5s",
            "--visibility-window",
            "20s",
            "--stalled-retry",
            "10m",
            "--resync",
            "10m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// What a campaign did and found.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub seed: u64,
    pub kills: usize,
    pub kills_of_leader: usize,
    pub failpoint_exits: BTreeMap<String, usize>,
    pub clean_exits: usize,
    pub other_exits: Vec<String>,
    pub incarnations: usize,
    pub failovers: usize,
    pub apiserver_restarts: usize,
    pub apiserver_downtime: Duration,
    pub faults_injected: u64,
    /// Agents per hard simulator mode.
    pub hard_modes: BTreeMap<String, usize>,
    /// The hard modes of each agent.
    pub agent_modes: BTreeMap<String, Vec<&'static str>>,
    pub dropped_connections: u64,
    pub sim_calls: BTreeMap<String, u64>,
    pub edits: usize,
    pub deletions: usize,
    pub recreations: usize,
    /// Re-created with the same spec (of `recreations`), and under a new name for the agent.
    pub same_spec_recreations: usize,
    pub successors: usize,
    pub status_wipes: usize,
    pub reverts: usize,
    pub failed_user_calls: usize,
    /// User changes (creations, edits, re-creations) the API server accepted.
    pub keys: usize,
    pub generations_charged: usize,
    pub replays: usize,
    pub duplicates: Vec<(String, String, Vec<u64>)>,
    pub converged: usize,
    /// Converged before any stall was resolved by hand, and how many were resolved (accept).
    pub converged_on_their_own: usize,
    pub resolved_by_accept: usize,
    /// Converged objects that took their inputs over from the ledger (reason Adopted).
    pub adopted: usize,
    /// Objects Ready for inputs the simulator never received a generate call for.
    pub ready_without_generation: Vec<String>,
    pub stalled: BTreeMap<String, usize>,
    pub open: Vec<String>,
    pub chaos_phase: Duration,
    pub time_to_converge: Option<Duration>,
    pub idle_sim_calls: BTreeMap<String, u64>,
    pub idle_api_writes: BTreeMap<String, f64>,
    pub idle_object_changes: usize,
    pub total: Duration,
    /// Every broken rule, in words. Empty = the campaign passed.
    pub violations: Vec<String>,
}

impl Figures {
    pub fn report(&self) -> String {
        let mut s = String::new();
        let fp: usize = self.failpoint_exits.values().sum();
        let _ = writeln!(s, "chaos campaign, seed {}", self.seed);
        let _ = writeln!(
            s,
            "  kills: {} SIGKILL ({} of the leader) + {} failpoint exits {:?}; {} clean exits (lease lost), {} other exits {:?}",
            self.kills,
            self.kills_of_leader,
            fp,
            self.failpoint_exits,
            self.clean_exits,
            self.other_exits.len(),
            self.other_exits
        );
        let _ = writeln!(
            s,
            "  operator processes: {}; failovers (lease holder changes): {}",
            self.incarnations, self.failovers
        );
        let _ = writeln!(
            s,
            "  kube-apiserver restarts: {} (down {:.1?} in all)",
            self.apiserver_restarts, self.apiserver_downtime
        );
        let _ = writeln!(
            s,
            "  simulator faults injected: {} (500/503/429) + {} dropped connections; calls {:?}",
            self.faults_injected, self.dropped_connections, self.sim_calls
        );
        let _ = writeln!(s, "  hard simulator modes (agents): {:?}", self.hard_modes);
        for (agent, modes) in &self.agent_modes {
            let _ = writeln!(s, "    {agent}: {modes:?}");
        }
        let _ = writeln!(
            s,
            "  user actions: {} edits, {} deletions, {} re-creations ({} with the same spec, {} under a new name), {} status wipes, {} reverts ({} refused or failed, e.g. while kube-apiserver was down)",
            self.edits,
            self.deletions,
            self.recreations,
            self.same_spec_recreations,
            self.successors,
            self.status_wipes,
            self.reverts,
            self.failed_user_calls
        );
        let _ = writeln!(
            s,
            "  keys (user changes): {}; generations charged: {} ({} credits); idempotent replays: {}; duplicates: {}",
            self.keys,
            self.generations_charged,
            self.generations_charged * 250,
            self.replays,
            self.duplicates.len()
        );
        let _ = writeln!(
            s,
            "  end: {} converged ({} on their own, then {} stalls resolved with accept; {} adopted from the ledger), Stalled {:?}, open {}",
            self.converged,
            self.converged_on_their_own,
            self.resolved_by_accept,
            self.adopted,
            self.stalled,
            self.open.len()
        );
        if !self.ready_without_generation.is_empty() {
            let _ = writeln!(
                s,
                "  Ready without their generation (the long run fails on this): {:?}",
                self.ready_without_generation
            );
        }
        let _ = writeln!(
            s,
            "  chaos phase {:.1?}; time to converge after it {}; total {:.1?}",
            self.chaos_phase,
            self.time_to_converge
                .map(|d| format!("{d:.1?}"))
                .unwrap_or_else(|| "never".into()),
            self.total
        );
        if self.time_to_converge.is_some() {
            let _ = writeln!(
                s,
                "  idle window: simulator calls {:?}, API writes {:?}, object changes {}",
                self.idle_sim_calls, self.idle_api_writes, self.idle_object_changes
            );
        } else {
            let _ = writeln!(s, "  idle window: not run (never converged)");
        }
        if self.violations.is_empty() {
            let _ = writeln!(s, "  oracle: passed");
        } else {
            let _ = writeln!(s, "  oracle: {} VIOLATIONS", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(s, "    - {v}");
            }
        }
        s
    }
}

/// One operator replica slot: a process (or a pending restart) and its history.
struct Slot {
    name: &'static str,
    child: Option<ManagedChild>,
    identity: String,
    restart_at: Option<Instant>,
}

/// One object of the campaign.
struct Obj {
    name: String,
    /// The name it was created under first; successors are named after it.
    base: String,
    agent: String,
    /// Deleted; re-created once it is gone.
    recreate: bool,
    /// Re-created with the spec it had (not a change: must buy nothing).
    same_spec: bool,
    /// The tags its spec had, oldest first (the last one is current).
    tags: Vec<String>,
    successors: usize,
}

struct Campaign<'a> {
    cfg: &'a CampaignConfig,
    cp: &'a ControlPlane,
    sim: &'a SimHandle,
    api: Api<AgentDynamics>,
    leases: Api<Lease>,
    spec: OperatorSpec,
    log_dir: PathBuf,
    /// Separate streams, so that timing (which process exits when) does not shift the
    /// schedule of kills or of user actions: kill times and victims, user actions, processes.
    kill_rng: StdRng,
    action_rng: StdRng,
    process_rng: StdRng,
    slots: Vec<Slot>,
    objects: Vec<Obj>,
    tags: usize,
    /// User actions taken so far.
    actions: usize,
    holder: Option<String>,
    figures: Figures,
    chaos: bool,
    started: Instant,
}

fn uniform(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        return lo;
    }
    lo + Duration::from_millis(rng.random_range(0..=(hi - lo).as_millis() as u64))
}

/// Simulator faults for the chaos phase: `rate` of calls get one, spread over 500, 503, 429
/// and dropped connections (after the work was done); every call is a little late.
pub fn chaos_faults(rate: f64) -> Faults {
    Faults {
        fail_rate_500: rate * 0.25,
        fail_rate_503: rate * 0.25,
        rate_limit_rate: rate * 0.25,
        drop_rate: rate * 0.25,
        retry_after_secs: 1,
        latency_ms: 20,
        ..Faults::default()
    }
}

impl<'a> Campaign<'a> {
    fn say(&self, line: impl AsRef<str>) {
        if self.cfg.verbose {
            eprintln!(
                "[chaos {:>6.1}s] {}",
                self.started.elapsed().as_secs_f64(),
                line.as_ref()
            );
        }
    }

    fn next_tag(&mut self) -> String {
        self.tags += 1;
        format!("s{}-t{}", self.cfg.seed, self.tags)
    }

    fn start_replica(&mut self, i: usize) -> anyhow::Result<()> {
        self.figures.incarnations += 1;
        let identity = format!("{}-{}", self.slots[i].name, self.figures.incarnations);
        let log = self.log_dir.join(format!("{identity}.log"));
        let (failpoints, seed) = if self.chaos && self.cfg.failpoint_rate > 0.0 {
            let p = self.cfg.failpoint_rate;
            let list = FAILPOINTS
                .iter()
                .map(|f| format!("{f}@{p}"))
                .collect::<Vec<_>>()
                .join(",");
            (list, self.process_rng.random::<u64>())
        } else {
            (String::new(), 0)
        };
        // The second replica's clock runs an hour behind: stamps it writes are an hour old to
        // the other, and the other's an hour ahead to it.
        let skew = (i == 1).then_some(CLOCK_SKEW);
        let child = self.spec.spawn_skewed(
            &identity,
            &log,
            &["--identity".to_string(), identity.clone()],
            &failpoints,
            seed,
            skew,
        )?;
        let slot = &mut self.slots[i];
        slot.child = Some(child);
        slot.identity = identity;
        slot.restart_at = None;
        Ok(())
    }

    /// Notes replicas that exited (and why) and restarts them when due.
    fn tend_replicas(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let exited = match self.slots[i].child.as_mut() {
                Some(child) => child.try_status().map(|s| (s, child.log.clone())),
                None => None,
            };
            if let Some((status, log)) = exited {
                let identity = self.slots[i].identity.clone();
                self.slots[i].child = None;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("panicked at") {
                    self.figures.violations.push(format!(
                        "operator {identity} panicked (log {})",
                        log.display()
                    ));
                }
                match status.code() {
                    Some(FAILPOINT_EXIT) => {
                        let name = failpoint_in_log(&text).unwrap_or_else(|| "?".into());
                        self.say(format!("{identity} stopped at failpoint {name}"));
                        *self.figures.failpoint_exits.entry(name).or_default() += 1;
                    }
                    Some(0) => {
                        self.say(format!("{identity} exited (lease lost)"));
                        self.figures.clean_exits += 1;
                    }
                    _ => {
                        // The error the process ended with (anyhow prints "Error: ..."), else
                        // its last line.
                        let line = text
                            .lines()
                            .rev()
                            .find(|l| l.starts_with("Error:"))
                            .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()));
                        self.say(format!("{identity} exited with {status}"));
                        self.figures.other_exits.push(format!(
                            "{identity}: {status}: {}",
                            line.unwrap_or("").chars().take(200).collect::<String>()
                        ));
                    }
                }
                let delay = uniform(
                    &mut self.process_rng,
                    (Duration::from_millis(200), Duration::from_millis(1000)),
                );
                self.slots[i].restart_at = Some(now + delay);
            }
            if self.slots[i].child.is_none() && self.slots[i].restart_at.is_some_and(|at| at <= now)
            {
                self.start_replica(i)?;
            }
        }
        Ok(())
    }

    fn kill_one(&mut self) {
        let alive: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].child.is_some())
            .collect();
        if alive.is_empty() {
            return;
        }
        let i = alive[self.kill_rng.random_range(0..alive.len())];
        let identity = self.slots[i].identity.clone();
        let leader = self.holder.as_deref() == Some(identity.as_str());
        if let Some(child) = self.slots[i].child.as_mut() {
            kill_now(child);
        }
        self.slots[i].child = None;
        self.figures.kills += 1;
        if leader {
            self.figures.kills_of_leader += 1;
        }
        let delay = uniform(
            &mut self.process_rng,
            (Duration::from_millis(200), Duration::from_millis(1000)),
        );
        self.slots[i].restart_at = Some(Instant::now() + delay);
        self.say(format!(
            "kill {} -> {identity}{}",
            self.figures.kills,
            if leader { " (leader)" } else { "" }
        ));
    }

    async fn watch_lease(&mut self) {
        let Ok(Ok(lease)) =
            tokio::time::timeout(Duration::from_secs(2), self.leases.get_opt("chaos")).await
        else {
            return;
        };
        let holder = lease
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty());
        if holder.is_some() && holder != self.holder {
            if self.holder.is_some() {
                self.figures.failovers += 1;
            }
            self.say(format!("leader: {}", holder.as_deref().unwrap_or("-")));
            self.holder = holder;
        }
    }

    async fn create(&mut self, i: usize) -> anyhow::Result<()> {
        let reuse = self.objects[i].same_spec && !self.objects[i].tags.is_empty();
        let tag = match self.objects[i].tags.last() {
            Some(tag) if reuse => tag.clone(),
            _ => self.next_tag(),
        };
        let orphan = self.action_rng.random_bool(0.25);
        let obj = object(&self.objects[i].name, &self.objects[i].agent, &tag, orphan)?;
        tokio::time::timeout(
            Duration::from_secs(5),
            self.api.create(&PostParams::default(), &obj),
        )
        .await
        .map_err(|_| anyhow!("create timed out"))??;
        if !reuse {
            self.figures.keys += 1;
            self.objects[i].tags.push(tag);
        }
        Ok(())
    }

    /// One user action on a random object: mostly an edit, sometimes a deletion.
    async fn user_action(&mut self) {
        let i = self.action_rng.random_range(0..self.objects.len());
        if self.objects[i].recreate {
            return;
        }
        let name = self.objects[i].name.clone();
        let agent = self.objects[i].agent.clone();
        // The first two actions are a status wipe and a deletion that comes back with the same
        // spec, so every campaign, however short, has both; then the dice decide.
        self.actions += 1;
        let roll: f64 = match self.actions {
            1 => 0.2,
            2 => 0.0,
            _ => self.action_rng.random(),
        };
        if roll < 0.15 {
            let deleted = tokio::time::timeout(
                Duration::from_secs(5),
                self.api.delete(&name, &DeleteParams::default()),
            )
            .await;
            match deleted {
                Ok(Ok(_)) => {
                    self.figures.deletions += 1;
                    self.objects[i].recreate = true;
                    // Half come back as they were (a GitOps re-sync, `replace --force`).
                    self.objects[i].same_spec =
                        self.actions == 2 || self.action_rng.random_bool(0.5);
                    self.say(format!("delete {name}"));
                }
                _ => self.figures.failed_user_calls += 1,
            }
            return;
        }
        if roll < 0.22 {
            // The status lost (a restore without it), then a refresh: must buy nothing.
            let wiped = tokio::time::timeout(Duration::from_secs(5), async {
                self.api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": null})),
                    )
                    .await?;
                let tag = format!("wipe-{}", self.figures.status_wipes);
                let refresh = json!({"metadata": {"annotations": {dynamics_operator::resource::RECONCILE_REQUESTED_AT: tag}}});
                self.api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(refresh))
                    .await
            })
            .await;
            match wiped {
                Ok(Ok(_)) => {
                    self.figures.status_wipes += 1;
                    self.say(format!("wipe the status of {name}"));
                }
                _ => self.figures.failed_user_calls += 1,
            }
            return;
        }
        let tags = &self.objects[i].tags;
        if roll < 0.28 && tags.len() >= 2 {
            // Back to the inputs before the last edit (a revert): already bought.
            let previous = tags[tags.len() - 2].clone();
            let patched = tokio::time::timeout(
                Duration::from_secs(5),
                self.api.patch(
                    &name,
                    &PatchParams::default(),
                    &edit_patch(&agent, &previous),
                ),
            )
            .await;
            match patched {
                Ok(Ok(_)) => {
                    self.figures.reverts += 1;
                    self.objects[i].tags.push(previous);
                }
                _ => self.figures.failed_user_calls += 1,
            }
            return;
        }
        let tag = self.next_tag();
        let patched = tokio::time::timeout(
            Duration::from_secs(5),
            self.api
                .patch(&name, &PatchParams::default(), &edit_patch(&agent, &tag)),
        )
        .await;
        match patched {
            Ok(Ok(_)) => {
                self.figures.edits += 1;
                self.figures.keys += 1;
                self.objects[i].tags.push(tag);
            }
            _ => self.figures.failed_user_calls += 1,
        }
    }

    /// Re-creates deleted objects once the operator let them go.
    async fn recreate_gone(&mut self) {
        for i in 0..self.objects.len() {
            if !self.objects[i].recreate {
                continue;
            }
            let name = self.objects[i].name.clone();
            let gone = matches!(
                tokio::time::timeout(Duration::from_secs(2), self.api.get_opt(&name)).await,
                Ok(Ok(None))
            );
            if !gone {
                continue;
            }
            let renamed = self.chaos && self.action_rng.random_bool(0.3);
            if renamed {
                // Another object for the same agent takes over (a rename in Git).
                self.objects[i].successors += 1;
                self.objects[i].name =
                    format!("{}-{}", self.objects[i].base, self.objects[i].successors);
            }
            let name = self.objects[i].name.clone();
            let same_spec = self.objects[i].same_spec;
            match self.create(i).await {
                Ok(()) => {
                    self.objects[i].recreate = false;
                    self.objects[i].same_spec = false;
                    self.figures.recreations += 1;
                    self.figures.same_spec_recreations += usize::from(same_spec);
                    self.figures.successors += usize::from(renamed);
                    self.say(format!("re-create {name}"));
                }
                Err(_) => self.figures.failed_user_calls += 1,
            }
        }
    }

    async fn restart_apiserver(&mut self) {
        self.say("restarting kube-apiserver");
        match self.cp.restart_apiserver().await {
            Ok(down) => {
                self.figures.apiserver_restarts += 1;
                self.figures.apiserver_downtime += down;
                self.say(format!("kube-apiserver back after {down:.1?}"));
            }
            Err(e) => self
                .figures
                .violations
                .push(format!("kube-apiserver did not come back: {e:#}")),
        }
    }

    /// The chaos phase: kills, faults, edits, deletions, an API server restart.
    async fn chaos_phase(&mut self) -> anyhow::Result<()> {
        let restarts = self.cfg.apiserver_restarts.max(1);
        // Restart kube-apiserver after these kill counts, spread over the run.
        let restart_after: Vec<usize> = (1..=restarts)
            .map(|k| k * self.cfg.kills / (restarts + 1))
            .collect();
        let mut restarted = 0;
        let mut next_kill = Instant::now() + uniform(&mut self.kill_rng, self.cfg.kill_interval);
        let mut next_action =
            Instant::now() + uniform(&mut self.action_rng, self.cfg.edit_interval);
        let mut next_lease = Instant::now();
        let mut next_recreate = Instant::now();
        while self.figures.kills < self.cfg.kills {
            let now = Instant::now();
            self.tend_replicas()?;
            if now >= next_lease {
                self.watch_lease().await;
                next_lease = now + Duration::from_millis(250);
            }
            if now >= next_kill {
                self.kill_one();
                next_kill = now + uniform(&mut self.kill_rng, self.cfg.kill_interval);
                if restarted < restart_after.len() && self.figures.kills >= restart_after[restarted]
                {
                    restarted += 1;
                    self.restart_apiserver().await;
                }
            }
            if now >= next_action {
                self.user_action().await;
                next_action =
                    Instant::now() + uniform(&mut self.action_rng, self.cfg.edit_interval);
            }
            if now >= next_recreate {
                self.recreate_gone().await;
                next_recreate = Instant::now() + Duration::from_millis(500);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Sets `resolve: accept` on every object Stalled about money (what a user does with
    /// `dynamics-operator resolve --accept`: take what the API shows, send nothing); returns
    /// how many. Counts how many had converged on their own before.
    async fn accept_stalls(&mut self) -> anyhow::Result<usize> {
        use dynamics_operator::reconcile::reasons;
        // RemoteDynamicsMissing has nothing to accept, but the annotation makes the operator
        // look again now instead of at its stalled pace; the API has recovered by then.
        let acceptable = [
            reasons::REMOTE_DYNAMICS_MISSING,
            reasons::GENERATION_NOT_VISIBLE,
            reasons::GENERATION_OUTCOME_UNKNOWN,
            reasons::INPUTS_ALREADY_BOUGHT,
            reasons::STATE_OUTDATED,
            reasons::REMOTE_STATUS_UNKNOWN,
        ];
        let list = self.api.list(&ListParams::default()).await?;
        self.figures.converged_on_their_own = list
            .items
            .iter()
            .filter(|o| end_state(o) == EndState::Converged)
            .count();
        let mut resolved = 0;
        for obj in &list.items {
            let EndState::Stalled(reason) = end_state(obj) else {
                continue;
            };
            if !acceptable.contains(&reason.as_str()) {
                continue;
            }
            let name = obj.metadata.name.clone().unwrap_or_default();
            let annotation = json!({"metadata": {"annotations": {dynamics_operator::resource::RESOLVE: format!("accept@{resolved}")}}});
            self.api
                .patch(&name, &PatchParams::default(), &Patch::Merge(annotation))
                .await?;
            self.say(format!("resolve accept {name} (Stalled {reason})"));
            resolved += 1;
        }
        self.figures.resolved_by_accept = resolved;
        // Let the operator see the annotations before the next look at the end states.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(resolved)
    }

    /// Ends the chaos: faults off, replicas without failpoints from now on, deleted objects
    /// re-created; then waits until every object is converged or Stalled.
    async fn converge(&mut self) -> anyhow::Result<Option<Duration>> {
        self.chaos = false;
        self.sim.set_faults(Faults::default());
        for o in &self.objects {
            let modes = lasting(&self.sim.agent_modes(&o.agent));
            self.sim.set_agent_modes(&o.agent, Some(modes));
        }
        let t0 = Instant::now();
        let deadline = t0 + self.cfg.converge_timeout;
        let mut last_open = Vec::new();
        while Instant::now() < deadline {
            self.tend_replicas()?;
            self.watch_lease().await;
            self.recreate_gone().await;
            if self.objects.iter().all(|o| !o.recreate) {
                if let Ok(list) = self.api.list(&ListParams::default()).await {
                    last_open = list
                        .items
                        .iter()
                        .filter_map(|o| match end_state(o) {
                            EndState::Open(why) => Some(format!(
                                "{}: {why}",
                                o.metadata.name.as_deref().unwrap_or("")
                            )),
                            _ => None,
                        })
                        .collect();
                    if last_open.is_empty() && list.items.len() == self.objects.len() {
                        return Ok(Some(t0.elapsed()));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.figures.open = last_open;
        Ok(None)
    }
}

/// A snapshot for the idle window.
struct Quiet {
    sim_calls: BTreeMap<String, u64>,
    generations: usize,
    api_writes: BTreeMap<String, f64>,
    versions: BTreeMap<String, String>,
}

async fn quiet_snapshot(
    cp: &ControlPlane,
    sim: &SimHandle,
    api: &Api<AgentDynamics>,
) -> anyhow::Result<Quiet> {
    let stats = sim.stats();
    let mut sim_calls = BTreeMap::new();
    for c in &stats.calls {
        *sim_calls.entry(c.endpoint.clone()).or_default() += c.count;
    }
    let generations = sim_generations(sim).len();
    let api_writes = apiserver_writes(cp).await?;
    let versions = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                o.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect();
    Ok(Quiet {
        sim_calls,
        generations,
        api_writes,
        versions,
    })
}

/// The API server's `apiserver_request_total` of writes (POST, PUT, PATCH, APPLY, DELETE) to
/// AgentDynamics and Events, by "VERB resource[/subresource]".
pub async fn apiserver_writes(cp: &ControlPlane) -> anyhow::Result<BTreeMap<String, f64>> {
    let token = cp
        .admin_token()
        .ok_or_else(|| anyhow!("the API server's metrics need the harness's admin token"))?;
    let ca = std::fs::read(cp.ca_file().ok_or_else(|| anyhow!("no CA"))?)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let text = http
        .get(format!("{}/metrics", cp.server_url()))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or("")
                .to_string()
        };
        let resource = label("resource");
        let verb = label("verb");
        if !matches!(resource.as_str(), "agentdynamics" | "events")
            || !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
        {
            continue;
        }
        let key = match label("subresource").as_str() {
            "" => format!("{verb} {resource}"),
            sub => format!("{verb} {resource}/{sub}"),
        };
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

fn diff<T: Copy + PartialEq + Default + std::ops::Sub<Output = T>>(
    after: &BTreeMap<String, T>,
    before: &BTreeMap<String, T>,
) -> BTreeMap<String, T> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), *v - before.get(k).copied().unwrap_or_default()))
        .filter(|(_, v)| *v != T::default())
        .collect()
}

/// Runs one campaign on `cp` (its own namespace, simulator and operators) and returns what it
/// did and found. Violations are in `Figures::violations`; an `Err` means the campaign itself
/// could not run.
pub async fn run_campaign(cp: &ControlPlane, cfg: &CampaignConfig) -> anyhow::Result<Figures> {
    let started = Instant::now();
    if cfg.objects == 0 || cfg.kills == 0 {
        bail!("a campaign needs objects and kills");
    }
    install_crd(cp).await?;
    let ns = cp.create_namespace(&format!("chaos-{}", cfg.seed)).await?;
    let sim = sim::start(SimConfig {
        secret: SECRET.into(),
        generation_time: Duration::from_millis(800),
        max_concurrent: 2,
        seed: Some(cfg.seed),
        faults: chaos_faults(cfg.fault_rate),
        // A resent call costs money: a repeated Idempotency-Key is charged like a new call.
        honour_idempotency_key: false,
        ..SimConfig::default()
    })
    .await?;
    let mut modes_used: BTreeMap<String, usize> = BTreeMap::new();
    let mut agent_modes = BTreeMap::new();
    for i in 0..cfg.objects {
        let (modes, names) = campaign_modes(cfg.seed, i);
        let agent = campaign_agent(cfg.seed, i);
        sim.set_agent_modes(&agent, Some(modes));
        for name in &names {
            *modes_used.entry(name.to_string()).or_default() += 1;
        }
        agent_modes.insert(agent, names);
    }

    let tmp = tempfile::Builder::new().prefix("chaos-logs-").tempdir()?;
    let log_dir = match &cfg.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let client = cp.kube_client().await?;
    let mut campaign = Campaign {
        cfg,
        cp,
        sim: &sim,
        api: Api::namespaced(client.clone(), &ns),
        leases: Api::namespaced(client, &ns),
        spec: OperatorSpec {
            binary: cfg.operator_binary.clone(),
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            namespace: ns.clone(),
            api_url: sim.url(),
            args: cfg.operator_args(&ns),
        },
        log_dir: log_dir.clone(),
        kill_rng: StdRng::seed_from_u64(cfg.seed),
        action_rng: StdRng::seed_from_u64(cfg.seed.wrapping_add(1)),
        process_rng: StdRng::seed_from_u64(cfg.seed.wrapping_add(2)),
        slots: ["replica-a", "replica-b"]
            .into_iter()
            .map(|name| Slot {
                name,
                child: None,
                identity: String::new(),
                restart_at: None,
            })
            .collect(),
        objects: (0..cfg.objects)
            .map(|i| Obj {
                name: format!("chaos-{i:03}"),
                base: format!("chaos-{i:03}"),
                agent: campaign_agent(cfg.seed, i),
                recreate: false,
                same_spec: false,
                tags: Vec::new(),
                successors: 0,
            })
            .collect(),
        tags: 0,
        actions: 0,
        holder: None,
        figures: Figures {
            seed: cfg.seed,
            hard_modes: modes_used,
            agent_modes,
            ..Figures::default()
        },
        chaos: true,
        started,
    };
    campaign.say(format!(
        "seed {}, {} kills, {} objects, namespace {ns}, operator logs in {}",
        cfg.seed,
        cfg.kills,
        cfg.objects,
        log_dir.display()
    ));
    for i in 0..campaign.slots.len() {
        campaign.start_replica(i)?;
    }
    for i in 0..cfg.objects {
        if campaign.create(i).await.is_err() {
            campaign.figures.failed_user_calls += 1;
            campaign.objects[i].recreate = true;
        }
    }

    let chaos_start = Instant::now();
    let result = campaign.chaos_phase().await;
    campaign.figures.chaos_phase = chaos_start.elapsed();
    result?;
    let chaos_stats = sim.stats();
    campaign.figures.faults_injected = chaos_stats.injected_faults;
    campaign.figures.dropped_connections = chaos_stats.dropped_connections;
    campaign.say(format!(
        "chaos over after {:.1?}; converging",
        campaign.figures.chaos_phase
    ));

    campaign.figures.time_to_converge = campaign.converge().await?;
    if campaign.figures.time_to_converge.is_some() {
        // The user's way out of the stalls about money that remain: accept what the API shows.
        // It never sends anything, so the charged generations must not move.
        let charged = sim_generations(&sim).len();
        let resolved = campaign.accept_stalls().await?;
        if resolved > 0 {
            campaign.figures.time_to_converge = campaign.converge().await?;
            let after = sim_generations(&sim).len();
            if after != charged {
                campaign.figures.violations.push(format!(
                    "resolve accept of {resolved} objects sent {} generate calls",
                    after - charged
                ));
            }
        }
    }
    let converged = campaign.figures.time_to_converge.is_some();
    if !converged {
        campaign.figures.violations.push(format!(
            "not converged {:?} after the chaos: {:?}",
            cfg.converge_timeout, campaign.figures.open
        ));
    }

    // Idle: nothing may be sent to the simulator or written to the API server.
    if converged {
        campaign.say(format!("idle window of {:?}", cfg.idle));
        let before = quiet_snapshot(cp, &sim, &campaign.api).await?;
        let idle_end = Instant::now() + cfg.idle;
        while Instant::now() < idle_end {
            campaign.tend_replicas()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let after = quiet_snapshot(cp, &sim, &campaign.api).await?;
        let f = &mut campaign.figures;
        f.idle_sim_calls = diff(&after.sim_calls, &before.sim_calls);
        f.idle_api_writes = diff(&after.api_writes, &before.api_writes);
        f.idle_object_changes = after
            .versions
            .iter()
            .filter(|(k, v)| before.versions.get(*k) != Some(v))
            .count();
        if !f.idle_sim_calls.is_empty() || after.generations != before.generations {
            f.violations.push(format!(
                "calls to the simulator while idle: {:?}, generations {} -> {}",
                f.idle_sim_calls, before.generations, after.generations
            ));
        }
        if !f.idle_api_writes.is_empty() || f.idle_object_changes > 0 {
            f.violations.push(format!(
                "writes to the API server while idle: {:?}, {} objects changed",
                f.idle_api_writes, f.idle_object_changes
            ));
        }
    }

    // The oracle on what the simulator charged and how each object ended.
    let records = sim_generations(&sim);
    let objects = campaign.api.list(&ListParams::default()).await?.items;
    let f = &mut campaign.figures;
    f.generations_charged = records.iter().filter(|r| !r.replayed).count();
    f.replays = records.iter().filter(|r| r.replayed).count();
    f.duplicates = duplicates(&records);
    for (agent, body, seqs) in &f.duplicates {
        f.violations.push(format!(
            "charged twice: agent {agent}, calls {seqs:?}, body {body}"
        ));
    }
    if f.generations_charged > f.keys {
        f.violations.push(format!(
            "{} generations charged for {} user changes",
            f.generations_charged, f.keys
        ));
    }
    let stats = sim.stats();
    f.sim_calls = BTreeMap::new();
    for c in &stats.calls {
        *f.sim_calls.entry(c.endpoint.clone()).or_default() += c.count;
    }
    f.converged = 0;
    f.stalled.clear();
    for obj in &objects {
        let name = obj.metadata.name.clone().unwrap_or_default();
        match end_state(obj) {
            EndState::Converged => {
                f.converged += 1;
                let accepted = obj
                    .status
                    .as_ref()
                    .and_then(|s| s.last_handled_resolve.as_deref())
                    .is_some_and(|v| v.starts_with("accept"));
                if accepted {
                    // The user took what the API shows as this spec's: not what was generated
                    // last for it, by their decision.
                    continue;
                }
                if ready_reason(obj).as_deref() == Some("Adopted") {
                    // Taken over from the ledger (a re-creation, a successor, a wiped status):
                    // what another incarnation bought, or sent with an outcome that stayed
                    // unknown, is never bought again; the API shows what it shows.
                    f.adopted += 1;
                    continue;
                }
                // What the simulator last generated is what the spec asks for.
                let last = sim
                    .agent(&obj.spec.agent_id)
                    .last_generate_request
                    .and_then(|b| b.get("image_url").cloned());
                if last != obj.spec.image_url.clone().map(serde_json::Value::String) {
                    // Kept apart from `violations`: never a second purchase, and rare since the
                    // fixes of RELIABILITY.md's long runs. The long run fails on it
                    // (benches/chaos.rs); the short one reports it.
                    f.ready_without_generation.push(format!(
                        "{name} is Ready but the simulator's last generate body has image_url {last:?}, the spec {:?}",
                        obj.spec.image_url
                    ));
                }
            }
            EndState::Stalled(reason) => {
                if !documented_stalled().contains(&reason.as_str()) {
                    f.violations.push(format!(
                        "{name} Stalled with an undocumented reason {reason}"
                    ));
                }
                *f.stalled.entry(reason).or_default() += 1;
            }
            EndState::Open(why) => {
                if converged {
                    f.violations.push(format!("{name} ended open: {why}"));
                }
            }
        }
    }
    if (f.converged as f64) < CONVERGED_AT_LEAST * objects.len() as f64 {
        f.violations.push(format!(
            "only {} of {} objects converged (at least {:.0}% must)",
            f.converged,
            objects.len(),
            CONVERGED_AT_LEAST * 100.0
        ));
    }
    if f.apiserver_restarts == 0 {
        f.violations
            .push("kube-apiserver was never restarted".to_string());
    }

    // Stop the operators before the simulator goes away.
    for slot in campaign.slots.iter_mut() {
        if let Some(mut child) = slot.child.take() {
            child.stop(Duration::from_secs(5));
        }
    }
    campaign.figures.total = started.elapsed();
    let figures = campaign.figures.clone();
    if cfg.log_dir.is_none() && !figures.violations.is_empty() {
        // Keep the logs of a failed campaign.
        let kept = tmp.keep();
        eprintln!("chaos: operator logs kept in {}", kept.display());
    }
    sim.shutdown().await;
    Ok(figures)
}

pub fn campaign_agent(seed: u64, i: usize) -> String {
    format!("CHAOS{:x}-{i:03}", seed)
}

/// Hard simulator modes of a campaign's agents, drawn from the seed: jobs invisible to GET for
/// a few seconds after the POST (less than the operator's visibility window), one model URL
/// for every generation, an unknown waiting status (`queued`), `data: null` once converged,
/// replies held back past the operator's API timeout after the work was done, hostile
/// Retry-After values. Every agent gets a few of them; `chaos_only` are lifted when the
/// campaign converges (a reply that always comes after the client gave up would stop any
/// client from ever seeing a PUT succeed).
pub fn campaign_modes(seed: u64, agent: usize) -> (Modes, Vec<&'static str>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15 ^ agent as u64));
    let mut modes = Modes::default();
    let mut names = Vec::new();
    if rng.random_bool(0.35) {
        modes.invisible_ms = rng.random_range(1000..=6000);
        names.push("invisible");
    }
    if rng.random_bool(0.35) {
        modes.fixed_model_url = true;
        names.push("fixed-url");
    }
    if rng.random_bool(0.2) {
        modes.waiting_status = Some("queued".into());
        names.push("queued");
    }
    if rng.random_bool(0.2) {
        modes.converged_reply = dynamics_operator::sim::ConvergedReply::DataNull;
        names.push("data-null");
    }
    if rng.random_bool(0.25) {
        modes.reply_delay_ms = 3000;
        names.push("late-replies");
    }
    if rng.random_bool(0.25) {
        let hostile = [
            "18446744073709551615",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "-5",
            "soon",
        ];
        modes.retry_after_header = Some(hostile[rng.random_range(0..hostile.len())].into());
        names.push("hostile-retry-after");
    }
    (modes, names)
}

/// The modes that stay once the chaos is over. `data: null` for a converged agent is a fault
/// of a busy service too: it ends with the chaos (the stall it caused stays until the user
/// looks again, see `accept_stalls`).
fn lasting(modes: &Modes) -> Modes {
    Modes {
        reply_delay_ms: 0,
        retry_after_header: None,
        converged_reply: Default::default(),
        ..modes.clone()
    }
}

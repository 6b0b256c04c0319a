//! Command line: `run` (the controller), `sim` (the simulator), `crd`, `reasons`, `plan` and
//! `apply`.
//! Every flag of `run` can also come from the environment, as a Deployment sets them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::{ApiSecret, ClientConfig, DynamicsClient, DEFAULT_BASE_URL};
use crate::controller::{LeaderConfig, RunConfig};
use crate::reconcile::budget::Budget;
use crate::reconcile::Settings;
use crate::telemetry::{LogFormat, LogLevel};

#[derive(Debug, Parser)]
#[command(
    name = "dynamics-operator",
    version,
    about = "Converge bitHuman agents' dynamics from AgentDynamics resources",
    after_help = "Examples:
  dynamics-operator apply -f examples/ --simulator     converge manifests against the simulator
  dynamics-operator plan -f examples/                  what apply would do and cost
  dynamics-operator crd | kubectl apply -f -           install the CRD
  dynamics-operator reasons                            every status reason: meaning and fix
  dynamics-operator run --namespace agents             the controller, one namespace
  dynamics-operator run --help                         every controller flag"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level [default: info for run and sim, warn for the other commands]. RUST_LOG, when
    /// set, wins (it can also set levels per module).
    #[arg(long, global = true, env = "LOG_LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Kubernetes controller (uses KUBECONFIG or the in-cluster service account).
    #[command(after_help = "Examples:
  BITHUMAN_API_SECRET=... dynamics-operator run
  dynamics-operator run --api-secret-file /var/run/secrets/bithuman/api-secret --namespace agents
  dynamics-operator run --max-concurrent-generations 1 --generations-per-hour 20
  dynamics-operator run --leader-elect --lease-namespace dynamics-operator    (more than one replica)
  dynamics-operator sim --addr 127.0.0.1:8090 --secret dev &  dynamics-operator run --api-url http://127.0.0.1:8090")]
    Run(Box<RunArgs>),
    /// Serve the bitHuman Dynamics API simulator.
    Sim(crate::sim::SimArgs),
    /// Print the AgentDynamics CustomResourceDefinition (YAML), or with --ledger the
    /// DynamicsLedger one (the cluster's record of purchases).
    Crd {
        /// Print the DynamicsLedger CRD instead.
        #[arg(long)]
        ledger: bool,
    },
    /// Resolve a stall about money on an AgentDynamics in the cluster: --accept takes what the
    /// API shows as the purchase (nothing is sent), --retry sends the pending generate call once
    /// more (250 credits). Sets the dynamics.bithuman.ai/resolve annotation (in file mode, put
    /// that annotation in the manifest).
    #[command(after_help = "Examples:
  dynamics-operator resolve agents/support-agent --accept
  dynamics-operator resolve agents/support-agent --retry")]
    Resolve(ResolveArgs),
    /// Approve the paid change an AgentDynamics waits for (reason ApprovalRequired, with
    /// --require-approval): sets dynamics.bithuman.ai/approve to the key of its spec as it
    /// stands. The approval holds for that key only.
    #[command(after_help = "Examples:
  dynamics-operator approve agents/support-agent")]
    Approve(ApproveArgs),
    /// Read existing agents (GET only) and print AgentDynamics manifests that adopt their
    /// dynamics when applied (nothing is bought), ready to commit to Git.
    #[command(after_help = "Examples:
  dynamics-operator import A91XMB7113 B72KQW0042 --namespace agents > agents.yaml
  dynamics-operator import A91XMB7113 --observe")]
    Import(ImportArgs),
    /// Print every paid generate call on record: from the cluster's purchase ledger, or with
    /// --state from a file mode state file.
    #[command(after_help = "Examples:
  dynamics-operator spend --since 24h
  dynamics-operator spend -n agents -o json
  dynamics-operator spend --state .dynamics-state.json")]
    Spend(SpendArgs),
    /// Print every condition and Event reason with its meaning and fix (Markdown, as in
    /// docs/troubleshooting.md).
    Reasons,
    /// Show what apply would do for a file or folder of manifests, and what it would cost.
    Plan(PlanArgs),
    /// Converge a file or folder of manifests without a cluster, keeping status in a state file.
    Apply(ApplyArgs),
}

/// The default of `run --api-calls-per-second`: 600 calls a minute per account, which covers
/// the drift resync of 6,000 objects every 10 minutes plus the polls of the generations an
/// account can run (two at once), and stays below the rates at which paid APIs usually start
/// answering 429. More objects per account stretch their resyncs instead of bursting.
pub const DEFAULT_API_CALLS_PER_SECOND: u32 = 10;

/// Where the bitHuman API is and how to authenticate (shared by `run`, `plan` and `apply`).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the bitHuman API (newer docs use https://api.bithuman.ai).
    #[arg(long, env = "BITHUMAN_API_URL", default_value = DEFAULT_BASE_URL, help_heading = "bitHuman API")]
    pub api_url: String,
    /// File holding the operator's API secret (e.g. a mounted Secret); BITHUMAN_API_SECRET also works.
    #[arg(long, env = "BITHUMAN_API_SECRET_FILE", help_heading = "bitHuman API")]
    pub api_secret_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the API besides the bundled and system roots
    /// (e.g. a TLS-inspecting proxy's). SSL_CERT_FILE / SSL_CERT_DIR replace the system roots.
    #[arg(long, env = "BITHUMAN_API_CA_FILE", help_heading = "bitHuman API")]
    pub api_ca_file: Option<PathBuf>,
    /// Timeout of one API request.
    #[arg(long, env = "BITHUMAN_API_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "bitHuman API")]
    pub api_timeout: Duration,
}

impl ApiArgs {
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            base_url: self.api_url.clone(),
            request_timeout: self.api_timeout,
            extra_root_certs_pem: self
                .api_ca_file
                .as_ref()
                .and_then(|path| std::fs::read(path).ok()),
            ..ClientConfig::default()
        }
    }

    /// The client settings, with `--api-url` checked: a URL no call could ever reach (not
    /// http(s), unparsable) is refused here, naming the flag, instead of failing on first use.
    pub fn checked_client_config(&self) -> anyhow::Result<ClientConfig> {
        if let Some(path) = &self.api_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read --api-ca-file {}: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
            if certs.is_empty() {
                anyhow::bail!(
                    "--api-ca-file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                );
            }
        }
        let config = self.client_config();
        DynamicsClient::new(config.clone()).map_err(|e| {
            anyhow::anyhow!(
                "--api-url (BITHUMAN_API_URL) {:?} is not usable: {}",
                self.api_url,
                e.detail().unwrap_or("the client could not be built")
            )
        })?;
        Ok(config)
    }

    /// The operator's own secret: the file if given, else BITHUMAN_API_SECRET. Never a flag, so
    /// it does not show in `ps`.
    pub fn secret(&self) -> anyhow::Result<Option<ApiSecret>> {
        if let Some(path) = &self.api_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read --api-secret-file {}: {e}", path.display())
            })?;
            return Ok(Some(ApiSecret::new(text)).filter(|s| !s.is_empty()));
        }
        Ok(std::env::var("BITHUMAN_API_SECRET")
            .ok()
            .map(ApiSecret::new)
            .filter(|s| !s.is_empty()))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE", help_heading = "Scope and throughput")]
    pub namespace: Option<String>,
    /// More namespaces whose Secrets spec.apiSecretRef may name, comma-separated, besides the
    /// operator's own (POD_NAMESPACE) and the watched one; '*': every namespace. RBAC must grant
    /// Secrets there; a reference elsewhere is Stalled SecretNotPermitted.
    #[arg(
        long,
        env = "SECRET_NAMESPACES",
        value_delimiter = ',',
        help_heading = "Scope and throughput"
    )]
    pub secret_namespaces: Vec<String>,
    /// Objects reconciled at once.
    #[arg(
        long,
        env = "CONCURRENCY",
        default_value_t = 16,
        help_heading = "Scope and throughput"
    )]
    pub concurrency: u16,
    /// Re-check converged objects for remote drift this often.
    #[arg(long, env = "RESYNC", default_value = "10m", value_parser = humantime::parse_duration, help_heading = "Scope and throughput")]
    pub resync: Duration,
    /// Generations running at once per account (objects whose Secrets hold the same api-secret
    /// share one account); 0: no limit. The account runs 2; with 2 or more, one more call per
    /// slot waits in the API's queue.
    #[arg(
        long,
        env = "MAX_CONCURRENT_GENERATIONS",
        default_value_t = 2,
        help_heading = "Credits"
    )]
    pub max_concurrent_generations: usize,
    /// Generations started per hour per account (default: no cap).
    #[arg(long, env = "GENERATIONS_PER_HOUR", help_heading = "Credits")]
    pub generations_per_hour: Option<usize>,
    /// A cap on credits per UTC hour, day or month, checked before every generate call against
    /// the purchase ledger: account:CREDITS/PERIOD (each account), namespace:CREDITS/PERIOD
    /// (each namespace) or namespace/NAME:CREDITS/PERIOD, optionally @N% for the warning
    /// threshold (default 80%). Repeat the flag or separate with commas. Default: none.
    #[arg(
        long = "budget",
        env = "BUDGETS",
        value_delimiter = ',',
        value_parser = Budget::parse,
        help_heading = "Credits"
    )]
    pub budgets: Vec<Budget>,
    /// Namespaces whose paid changes wait for approval (reason ApprovalRequired) until
    /// `dynamics-operator approve NAMESPACE/NAME` approves their key; `*` for every namespace.
    /// Comma-separated or repeated. Default: none.
    #[arg(
        long,
        env = "REQUIRE_APPROVAL",
        value_delimiter = ',',
        help_heading = "Credits"
    )]
    pub require_approval: Vec<String>,
    /// API calls per second per account (GET, PUT and generate together, retries included;
    /// objects whose Secrets hold the same api-secret share one account); 0: no limit. A 429
    /// pauses the whole account; objects with work pending go ahead of drift resyncs.
    #[arg(
        long,
        env = "API_CALLS_PER_SECOND",
        default_value_t = DEFAULT_API_CALLS_PER_SECOND,
        help_heading = "Scope and throughput"
    )]
    pub api_calls_per_second: u32,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "METRICS_ADDR",
        default_value = "0.0.0.0:8080",
        help_heading = "Observability"
    )]
    pub metrics_addr: SocketAddr,
    /// Only the holder of a coordination.k8s.io Lease reconciles (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", help_heading = "Leader election")]
    pub leader_elect: bool,
    #[arg(
        long,
        env = "LEASE_NAME",
        default_value = "dynamics-operator",
        help_heading = "Leader election"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "default",
        help_heading = "Leader election"
    )]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (default: the pod name, else hostname and pid).
    #[arg(long, env = "POD_NAME", help_heading = "Leader election")]
    pub identity: Option<String>,
    /// Lease validity in seconds.
    #[arg(long, default_value_t = 15, help_heading = "Leader election")]
    pub lease_duration: u64,
    /// Fastest poll while a generation runs.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, help_heading = "Timing")]
    pub poll_min: Duration,
    /// Slowest poll while a generation runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Timing")]
    pub poll_max: Duration,
    /// Retry of a Stalled object (a spec or Secret change retries at once).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, help_heading = "Timing")]
    pub stalled_retry: Duration,
    /// How long a generate call that was accepted (or got no definite answer) may stay invisible
    /// in GET before the object is Stalled. Nothing is ever sent again for it automatically.
    /// At least --api-timeout plus --poll-max.
    #[arg(long, env = "VISIBILITY_WINDOW", default_value = "15m", value_parser = humantime::parse_duration, help_heading = "Timing")]
    pub visibility_window: Duration,
}

impl RunArgs {
    pub fn into_config(self) -> anyhow::Result<RunConfig> {
        let identity = self.identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "dynamics-operator".into());
            format!("{host}-{}", std::process::id())
        });
        let settings = Settings {
            resync: self.resync,
            poll_min: self.poll_min,
            poll_max: self.poll_max,
            stalled_retry: self.stalled_retry,
            visibility_window: self.visibility_window,
            ..Settings::default()
        };
        settings
            .validate(self.api.api_timeout)
            .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
        if self.concurrency == 0 {
            anyhow::bail!("refusing to start: --concurrency must be at least 1");
        }
        if self.lease_duration < 2 {
            anyhow::bail!("refusing to start: --lease-duration must be at least 2 seconds");
        }
        let mut api = self
            .api
            .checked_client_config()
            .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
        api.calls_per_second = self.api_calls_per_second;
        for ns in &self.secret_namespaces {
            let ns = ns.trim();
            let valid = ns == "*"
                || (!ns.is_empty()
                    && ns.len() <= 63
                    && ns
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            if !valid {
                anyhow::bail!(
                    "refusing to start: --secret-namespaces (SECRET_NAMESPACES) holds {ns:?}, which is not a namespace name or '*'"
                );
            }
        }
        let secret_scope = crate::controller::SecretScope::new(
            &self.lease_namespace,
            self.namespace.as_deref(),
            &self.secret_namespaces,
        );
        Ok(RunConfig {
            default_secret: self.api.secret()?,
            api,
            secret_scope,
            namespace: self.namespace,
            concurrency: self.concurrency,
            settings,
            max_concurrent_generations: self.max_concurrent_generations,
            generations_per_hour: self.generations_per_hour,
            budgets: self.budgets,
            require_approval: self.require_approval,
            metrics_addr: self.metrics_addr,
            leader_election: self.leader_elect.then(|| LeaderConfig {
                lease_name: self.lease_name,
                lease_namespace: self.lease_namespace,
                identity,
                lease_duration: self.lease_duration,
                renew_grace: (self.lease_duration / 3).max(1),
            }),
        })
    }
}

// ---- file mode: `plan` and `apply` ----

/// Flags shared by `plan` and `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Manifests: a file, a directory (read recursively: *.yaml, *.yml, *.json) or - for standard
    /// input. Repeatable. Documents of other kinds are skipped with a note; v1 Secrets are used
    /// to resolve spec.apiSecretRef.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub filename: Vec<PathBuf>,

    /// Where the API is and the operator's secret (as for `run`; the secret itself comes from
    /// --api-secret-file or BITHUMAN_API_SECRET, never a flag).
    #[command(flatten)]
    pub api: ApiArgs,

    /// State file holding each object's status between runs; keep it, or the next apply generates
    /// every object again [default: .dynamics-state.json in the current directory]. Refused with
    /// --simulator (whose state lives in memory).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Output: table; or json / yaml (apply: a v1 List of the objects with status, as
    /// `kubectl get -o json`; plan: the plan).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Start the built-in Dynamics API simulator in this process (fast generations, no account,
    /// no credits) and use it instead of the real API. State is kept in memory only.
    #[arg(long)]
    pub simulator: bool,

    /// A cap on credits per UTC hour, day or month, checked against what the state file
    /// records as spent before every generate call (as `run --budget`): account:CREDITS/PERIOD,
    /// namespace:CREDITS/PERIOD or namespace/NAME:CREDITS/PERIOD, optionally @N%. Repeat the
    /// flag or separate with commas. `plan` shows which changes a budget would hold back.
    #[arg(long = "budget", value_delimiter = ',', value_parser = Budget::parse)]
    pub budgets: Vec<Budget>,
}

/// `dynamics-operator import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The agents to import, as the API knows them.
    #[arg(required = true)]
    pub agents: Vec<String>,
    /// metadata.namespace of the manifests (default: none, kubectl's namespace applies).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Write every manifest with managementPolicy: Observe (report only, never write or pay).
    #[arg(long)]
    pub observe: bool,
}

/// `dynamics-operator spend`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpendArgs {
    /// Only calls sent within this long, e.g. 24h, 7d (default: everything on record; the
    /// ledger keeps an agent's last 16 purchases).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only objects of this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Read a file mode state file instead of the cluster.
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = crate::spend::SpendFormat::Table)]
    pub output: crate::spend::SpendFormat,
}

/// `dynamics-operator approve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApproveArgs {
    /// The object, as NAMESPACE/NAME.
    pub object: String,
}

/// `dynamics-operator resolve`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("choice").required(true).args(["accept", "retry"])))]
pub struct ResolveArgs {
    /// The object, as NAMESPACE/NAME.
    pub object: String,
    /// Take what the API shows as the purchase; nothing is sent.
    #[arg(long)]
    pub accept: bool,
    /// Send the pending generate call once more, on purpose (250 credits).
    #[arg(long)]
    pub retry: bool,
}

/// `dynamics-operator plan`: show what `apply` would do and what it would cost.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Save the plan (each object's action, key and credits, and a digest of all of it) for
    /// `apply --plan FILE`, which does exactly that or changes nothing.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `dynamics-operator apply`: converge every object and wait until all are Ready.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Do exactly the plan saved by `plan --out FILE`: refused, changing nothing, if the
    /// manifests, the state or what the API shows would make it differ; nothing is bought
    /// that the plan did not show.
    #[arg(long = "plan")]
    pub plan: Option<PathBuf>,

    /// How long to wait for every object to become Ready, e.g. 90s, 5m, 1h.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub timeout: Duration,

    /// Generations running at once per account (the account runs two; with 2 or more, one more
    /// call per slot waits in the API's queue). 0: no limit.
    #[arg(long, default_value_t = 2)]
    pub max_concurrent_generations: usize,

    /// At most this many new generations per account in any hour (each costs 250 credits).
    /// Default: no limit.
    #[arg(long)]
    pub generations_per_hour: Option<usize>,
}

/// How `plan` and `apply` print their result on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
    /// `plan` only: a Markdown table for a pull-request comment.
    Markdown,
}

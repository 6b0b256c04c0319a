//! Control planes with an audit log: what the operator's ServiceAccount asked for, and the
//! answers.

use std::path::PathBuf;

use serde_json::Value as Json;

use crate::grants::Permission;
use crate::support::controlplane::ControlPlane;
use crate::support::operator::{crd_established, CRD_NAME, LEDGER_CRD_NAME};
use crate::support::tools::{find, kustomize};

/// Records every request made by a ServiceAccount (the operator's), with its response code.
pub const AUDIT_POLICY: &str =
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n\
rules:\n- level: Metadata\n  userGroups: [\"system:serviceaccounts\"]\n- level: None\n";

pub struct Audited {
    pub cp: ControlPlane,
    pub audit_log: PathBuf,
    pub dir: PathBuf,
}

pub async fn start_audited() -> Audited {
    let dir = tempfile::Builder::new()
        .prefix("dynamics-deploy-audit-")
        .tempdir()
        .unwrap()
        .keep();
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY).unwrap();
    let audit_log = dir.join("audit.log");
    let cp = ControlPlane::builder()
        .allow_existing(false)
        .apiserver_arg(format!("--audit-policy-file={}", policy.display()))
        .apiserver_arg(format!("--audit-log-path={}", audit_log.display()))
        .apiserver_arg("--audit-log-mode=blocking")
        .start()
        .await
        .expect("the control plane must start (see tests/controlplane/build.sh)");
    let audited = Audited { cp, audit_log, dir };
    audited.install_crd().await;
    audited
}

impl Drop for Audited {
    fn drop(&mut self) {
        self.cp.shutdown();
        self.remove_dir();
    }
}

impl Audited {
    fn remove_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn install_crd(&self) {
        let base = kustomize("deploy");
        for name in [CRD_NAME, LEDGER_CRD_NAME] {
            let crd = find(&base, "CustomResourceDefinition", name).clone();
            self.cp
                .apply_yaml(&serde_json::to_string(&crd).unwrap())
                .expect("install the CRDs from deploy/");
        }
        crd_established(&self.cp).await.expect("CRD established");
    }

    /// The requests `user` made, as (group, resource[/subresource], verb) with response codes.
    pub fn requests(&self, user: &str) -> Vec<(Permission, u16)> {
        self.requests_in(user)
            .into_iter()
            .map(|(p, _, code)| (p, code))
            .collect()
    }

    /// The same, with the namespace each request was in (None: cluster-wide).
    pub fn requests_in(&self, user: &str) -> Vec<(Permission, Option<String>, u16)> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Json>(line).ok())
            .filter(|e| e["user"]["username"] == user)
            .filter_map(|e| {
                let code = e["responseStatus"]["code"].as_u64()? as u16;
                let r = &e["objectRef"];
                let mut resource = r["resource"].as_str()?.to_string();
                if let Some(sub) = r["subresource"].as_str() {
                    resource = format!("{resource}/{sub}");
                }
                Some((
                    Permission {
                        group: r["apiGroup"].as_str().unwrap_or("").to_string(),
                        resource,
                        verb: e["verb"].as_str()?.to_string(),
                    },
                    r["namespace"].as_str().map(str::to_string),
                    code,
                ))
            })
            .collect()
    }
}

/// One control plane shared by the tests below that isolate themselves by namespace.
pub async fn shared() -> &'static Audited {
    static SHARED: tokio::sync::OnceCell<Audited> = tokio::sync::OnceCell::const_new();
    extern "C" fn stop_shared() {
        if let Some(a) = SHARED.get() {
            a.cp.shutdown();
            a.remove_dir();
        }
    }
    SHARED
        .get_or_init(|| async {
            let a = start_audited().await;
            crate::support::process::at_exit(stop_shared);
            a
        })
        .await
}

//! The Argo CD health check and refresh action for `AgentDynamics` (deploy/argocd/), run by a Lua
//! 5.1 interpreter the way Argo CD runs them (gopher-lua is a Lua 5.1):
//!
//! * the object is the global `obj`, converted from YAML as Argo CD converts it (maps and lists
//!   become tables, numbers become Lua numbers, null becomes nil);
//! * only the libraries Argo CD opens for customizations from argocd-cm: base, package, table and
//!   an `os` reduced to `time` and `date` that only `require("os")` returns (no `string`, no
//!   `math`, no `io`). Argo CD v3.1 registers its restricted os functions under the name of
//!   the table library (util/lua/oslib_safe.go), so there is no global `os` and `table` has
//!   `time` and `date`: a script that calls `os.date` without the `require` fails in Argo CD;
//! * every case of `health_test.yaml` and `actions/action_test.yaml` (Argo CD's own layouts);
//! * and the argocd-cm snippet must embed exactly these scripts
//!   (`DYNAMICS_BLESS=1 cargo test --test argocd_health` rewrites it after a script changes).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, Value as LuaValue, VmState};
use serde_json::Value as Json;

const HEALTH_STATUSES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
];
const ANNOTATION: &str = "dynamics.bithuman.ai/reconcile-requested-at";

fn argocd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_yaml(path: &Path) -> Json {
    serde_saphyr::from_str(&read(path))
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A Lua state with what Argo CD gives a customization script from argocd-cm.
fn argocd_lua() -> Lua {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::PACKAGE | StdLib::OS,
        LuaOptions::default(),
    )
    .expect("create a Lua 5.1 state");
    let globals = lua.globals();
    let full_os: mlua::Table = globals.get("os").expect("os library");
    let safe_os = lua.create_table().unwrap();
    for name in ["time", "date"] {
        let f: mlua::Function = full_os.get(name).unwrap();
        safe_os.set(name, f).unwrap();
    }
    globals.set("os", LuaValue::Nil).unwrap();
    let table: mlua::Table = globals.get("table").unwrap();
    for name in ["time", "date"] {
        let f: mlua::Function = safe_os.get(name).unwrap();
        table.set(name, f).unwrap();
    }
    // `require("os")` gets the reduced table.
    let package: mlua::Table = globals.get("package").unwrap();
    let loaded: mlua::Table = package.get("loaded").unwrap();
    loaded.set("os", safe_os).unwrap();
    // Argo CD stops a script after one second.
    let start = Instant::now();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(10_000),
        move |_, _| {
            if start.elapsed() > Duration::from_secs(1) {
                Err(mlua::Error::runtime("script ran longer than 1s"))
            } else {
                Ok(VmState::Continue)
            }
        },
    )
    .unwrap();
    lua
}

fn to_lua(lua: &Lua, value: &Json) -> LuaValue {
    match value {
        Json::Null => LuaValue::Nil,
        Json::Bool(b) => LuaValue::Boolean(*b),
        Json::Number(n) => LuaValue::Number(n.as_f64().expect("a number")),
        Json::String(s) => LuaValue::String(lua.create_string(s).unwrap()),
        Json::Array(items) => {
            let t = lua.create_table().unwrap();
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)).unwrap();
            }
            LuaValue::Table(t)
        }
        Json::Object(map) => {
            let t = lua.create_table().unwrap();
            for (k, v) in map {
                t.raw_set(k.as_str(), to_lua(lua, v)).unwrap();
            }
            LuaValue::Table(t)
        }
    }
}

/// Lua back to JSON as Argo CD's gopher-json does: a table with keys 1..n is a list, any other
/// table an object; an empty table is an object here and fixed up by `clean` like Argo CD does.
fn from_lua(value: &LuaValue) -> Json {
    match value {
        LuaValue::Nil => Json::Null,
        LuaValue::Boolean(b) => Json::Bool(*b),
        LuaValue::Integer(i) => Json::from(*i),
        LuaValue::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Json::from(*n as i64),
        LuaValue::Number(n) => Json::from(*n),
        LuaValue::String(s) => Json::String(s.to_string_lossy()),
        LuaValue::Table(t) => {
            let n = t.raw_len();
            let count = t.pairs::<LuaValue, LuaValue>().count();
            if n > 0 && count == n {
                Json::Array(
                    (1..=n)
                        .map(|i| from_lua(&t.raw_get::<LuaValue>(i).unwrap()))
                        .collect(),
                )
            } else {
                let mut map = serde_json::Map::new();
                for pair in t.pairs::<LuaValue, LuaValue>() {
                    let (k, v) = pair.unwrap();
                    let key = match k {
                        LuaValue::String(s) => s.to_string_lossy(),
                        other => panic!("a non-string key in an object: {other:?}"),
                    };
                    map.insert(key, from_lua(&v));
                }
                Json::Object(map)
            }
        }
        other => panic!("a script returned a value JSON cannot hold: {other:?}"),
    }
}

/// Argo CD's cleanReturnedObj: an empty table where the input had a list is that (empty) list.
fn clean(new: &mut Json, old: &Json) {
    match (new, old) {
        (Json::Object(n), Json::Object(o)) => {
            for (k, ov) in o {
                if let Some(nv) = n.get_mut(k) {
                    if nv.as_object().is_some_and(|m| m.is_empty()) && ov.is_array() {
                        *nv = Json::Array(vec![]);
                    } else {
                        clean(nv, ov);
                    }
                }
            }
        }
        (Json::Array(n), Json::Array(o)) => {
            for (nv, ov) in n.iter_mut().zip(o) {
                clean(nv, ov);
            }
        }
        _ => {}
    }
}

/// Run `script` with `obj` as Argo CD does and return what it returned, as JSON.
fn run(script: &str, name: &str, obj: &Json) -> Result<Json, String> {
    let lua = argocd_lua();
    lua.globals().set("obj", to_lua(&lua, obj)).unwrap();
    let returned = lua
        .load(script)
        .set_name(name)
        .eval::<LuaValue>()
        .map_err(|e| e.to_string())?;
    Ok(from_lua(&returned))
}

#[derive(Debug, PartialEq, Eq)]
struct Health {
    status: String,
    message: String,
}

/// ExecuteHealthLua: the script must return a table; an unknown status becomes Unknown.
fn health(obj: &Json) -> Result<Health, String> {
    let script = read(&argocd_dir().join("health.lua"));
    let returned = run(&script, "health.lua", obj)?;
    let Json::Object(map) = returned else {
        return Err(format!("health.lua returned {returned:?}, not a table"));
    };
    let text = |k: &str| map.get(k).and_then(Json::as_str).unwrap_or("").to_string();
    let status = text("status");
    if !HEALTH_STATUSES.contains(&status.as_str()) {
        return Ok(Health {
            status: "Unknown".into(),
            message: "Lua returned an invalid health status".into(),
        });
    }
    Ok(Health {
        status,
        message: text("message"),
    })
}

#[test]
fn health_test_yaml_cases_pass() {
    let dir = argocd_dir();
    let tests = read_yaml(&dir.join("health_test.yaml"));
    let cases = tests["tests"].as_array().expect("tests: a list");
    assert!(cases.len() >= 8, "health_test.yaml has too few cases");
    let mut failures = Vec::new();
    for case in cases {
        let input = case["inputPath"].as_str().expect("inputPath");
        let want = Health {
            status: case["healthStatus"]["status"].as_str().unwrap().to_string(),
            message: case["healthStatus"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        };
        match health(&read_yaml(&dir.join(input))) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{input}: want {want:?}\n      got  {got:?}")),
            Err(e) => failures.push(format!("{input}: health.lua failed: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} health cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn health_cases_cover_every_status_and_every_testdata_file() {
    let dir = argocd_dir();
    let tests = read_yaml(&dir.join("health_test.yaml"));
    let cases = tests["tests"].as_array().unwrap();
    let statuses: BTreeSet<&str> = cases
        .iter()
        .map(|c| c["healthStatus"]["status"].as_str().unwrap())
        .collect();
    for want in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(statuses.contains(want), "no health case expects {want}");
    }
    let used: BTreeSet<String> = cases
        .iter()
        .map(|c| c["inputPath"].as_str().unwrap().to_string())
        .collect();
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(dir.join("testdata")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        files.insert(format!("testdata/{name}"));
    }
    assert_eq!(
        files, used,
        "every testdata file must be a case in health_test.yaml, and every case's file must exist"
    );
}

/// Argo CD must get an answer for any object the API server can hold, never a script error.
#[test]
fn health_lua_answers_for_odd_objects() {
    let odd = [
        serde_json::json!({"apiVersion": "dynamics.bithuman.ai/v1alpha1", "kind": "AgentDynamics", "metadata": {"name": "x"}}),
        serde_json::json!({"metadata": {"name": "x", "generation": 1}, "spec": {"agentId": "A1"}, "status": {}}),
        serde_json::json!({"metadata": {"name": "x", "generation": 1}, "status": {"observedGeneration": 1, "conditions": []}}),
        serde_json::json!({"metadata": {"name": "x", "generation": 2}, "status": {"observedGeneration": 2, "conditions": [{"type": "Ready"}, {"status": "True"}, {}]}}),
        serde_json::json!({"metadata": {"name": "x"}, "status": {"observedGeneration": 5, "conditions": [{"type": "Ready", "status": "True"}]}}),
        serde_json::json!({"metadata": {"name": "x", "generation": 1}, "spec": {"suspend": false}, "status": {"observedGeneration": 1, "conditions": [{"type": "Stalled", "status": "True"}]}}),
        serde_json::json!({"metadata": {"name": "x", "generation": 1}, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 0}]}}),
        serde_json::json!({"metadata": {"name": "x", "generation": 1}, "status": {"observedGeneration": 1, "remoteStatus": null, "conditions": null}}),
    ];
    for obj in &odd {
        let got = health(obj).unwrap_or_else(|e| panic!("health.lua failed on {obj}: {e}"));
        assert!(
            ["Healthy", "Progressing", "Degraded", "Suspended"].contains(&got.status.as_str()),
            "{obj} -> {got:?}"
        );
        assert!(!got.message.is_empty(), "{obj} -> an empty message");
    }
    // Ready=True with no generation to compare: trusted; Stalled without a message: still Degraded.
    assert_eq!(health(&odd[4]).unwrap().status, "Healthy");
    assert_eq!(health(&odd[5]).unwrap().status, "Degraded");
}

/// The harness itself: it must refuse what Argo CD refuses, or the tests above prove nothing.
#[test]
fn the_harness_has_only_argo_cds_libraries() {
    let obj = serde_json::json!({"metadata": {"name": "x"}});
    for script in [
        "return {status = string.format('%s', 'Healthy')}",
        "return {status = 'Healthy', message = tostring(math.floor(1.5))}",
        "return {status = ('Healthy'):lower()}",
        "os.execute('true') return {}",
        "return {status = os.getenv('HOME')}",
        "io.write('x') return {}",
        "return {status = 'Healthy', message = os.date('!%Y')}",
    ] {
        assert!(
            run(script, "probe.lua", &obj).is_err(),
            "{script:?} must fail as it does in Argo CD"
        );
    }
    let ok = run(
        "local os = require('os') local t = {} table.insert(t, os.date('!%Y')) return {status = 'Healthy', message = t[1] .. ' ' .. os.time()}",
        "probe.lua",
        &obj,
    )
    .expect("base, table, and os.time and os.date through require(\"os\") are there");
    assert_eq!(ok["status"], "Healthy");
    let looping = run("while true do end", "loop.lua", &obj);
    assert!(looping.is_err(), "an endless script must be stopped");
    // null is nil, numbers are numbers, lists are 1-based tables.
    let probe = serde_json::json!({"a": null, "n": 3, "l": ["x", "y"]});
    let got = run(
        "return {a = obj.a == nil, n = obj.n + 1, l = obj.l[2], len = #obj.l}",
        "probe.lua",
        &probe,
    )
    .unwrap();
    assert_eq!(
        got,
        serde_json::json!({"a": true, "n": 4, "l": "y", "len": 2})
    );
}

fn discovery(obj: &Json) -> Vec<(String, bool)> {
    let script = read(&argocd_dir().join("actions/discovery.lua"));
    let returned = run(&script, "discovery.lua", obj).expect("discovery.lua runs");
    let Json::Object(map) = returned else {
        panic!("discovery.lua must return a table of actions, got {returned:?}");
    };
    let mut actions: Vec<(String, bool)> = map
        .iter()
        .map(|(name, v)| {
            let disabled = v.get("disabled").and_then(Json::as_bool).unwrap_or(false);
            (name.clone(), disabled)
        })
        .collect();
    actions.sort();
    actions
}

#[test]
fn action_test_yaml_cases_pass() {
    let dir = argocd_dir().join("actions");
    let tests = read_yaml(&dir.join("action_test.yaml"));

    let discovery_tests = tests["discoveryTests"].as_array().expect("discoveryTests");
    assert!(!discovery_tests.is_empty());
    for case in discovery_tests {
        let input = case["inputPath"].as_str().unwrap();
        let mut want: Vec<(String, bool)> = case["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["disabled"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        want.sort();
        assert_eq!(
            discovery(&read_yaml(&dir.join(input))),
            want,
            "discovery for {input}"
        );
    }

    let action_tests = tests["actionTests"].as_array().expect("actionTests");
    assert!(!action_tests.is_empty());
    for case in action_tests {
        let action = case["action"].as_str().unwrap();
        let input = read_yaml(&dir.join(case["inputPath"].as_str().unwrap()));
        let expected_path = case["expectedOutputPath"].as_str().unwrap();
        let mut expected = read_yaml(&dir.join(expected_path));
        let script = read(&dir.join(action).join("action.lua"));
        let before = now_seconds();
        let returned = run(&script, "action.lua", &input)
            .unwrap_or_else(|e| panic!("action {action} failed: {e}"));
        let after = now_seconds();
        let mut output = returned;
        clean(&mut output, &input);

        // The one value that depends on the clock: a UTC RFC 3339 time, taken now.
        let written = output["metadata"]["annotations"][ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("action {action} did not set {ANNOTATION}: {output}"))
            .to_string();
        let at = parse_utc(&written)
            .unwrap_or_else(|| panic!("{ANNOTATION}={written:?} is not YYYY-MM-DDTHH:MM:SSZ"));
        assert!(
            (before - 1..=after + 1).contains(&at),
            "{ANNOTATION}={written} is not the current time"
        );
        assert_ne!(
            Some(written.as_str()),
            input["metadata"]["annotations"][ANNOTATION].as_str(),
            "a refresh must write a new value, or the operator sees no change"
        );
        expected["metadata"]["annotations"][ANNOTATION] = Json::String(written);
        assert_eq!(
            output, expected,
            "action {action} on {}: output differs from {expected_path}",
            case["inputPath"]
        );
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`, strictly that form.
fn parse_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

/// The argocd-cm data Argo CD needs, built from the script files.
fn argocd_cm() -> String {
    let dir = argocd_dir();
    let indent = |text: &str, by: &str| -> String {
        text.lines()
            .map(|l| {
                if l.is_empty() {
                    "\n".to_string()
                } else {
                    format!("{by}{l}\n")
                }
            })
            .collect()
    };
    let health = read(&dir.join("health.lua"));
    let discovery = read(&dir.join("actions/discovery.lua"));
    let refresh = read(&dir.join("actions/refresh/action.lua"));
    format!(
        "# Generated from health.lua and actions/ by tests/argocd_health.rs (DYNAMICS_BLESS=1 cargo test\n\
         # --test argocd_health rewrites it); the test fails when it differs from the scripts.\n\
         #\n\
         # Merge the data into your Argo CD's argocd-cm ConfigMap, e.g. as a patch in the\n\
         # kustomization that installs Argo CD, or: kubectl -n argocd patch configmap argocd-cm\n\
         # --patch-file deploy/argocd/argocd-cm.yaml\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: argocd-cm\n  namespace: argocd\n\
         data:\n\
         \x20 resource.customizations.health.dynamics.bithuman.ai_AgentDynamics: |\n{}\
         \x20 resource.customizations.actions.dynamics.bithuman.ai_AgentDynamics: |\n\
         \x20   discovery.lua: |\n{}\
         \x20   definitions:\n\
         \x20     - name: refresh\n\
         \x20       action.lua: |\n{}",
        indent(&health, "    "),
        indent(&discovery, "      "),
        indent(&refresh, "          "),
    )
}

#[test]
fn argocd_cm_embeds_exactly_the_tested_scripts() {
    let path = argocd_dir().join("argocd-cm.yaml");
    let want = argocd_cm();
    if std::env::var("DYNAMICS_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} is out of date with health.lua / actions/: run DYNAMICS_BLESS=1 cargo test --test argocd_health",
        path.display()
    );
    // And it is what Argo CD parses: the health key holds health.lua, the actions key holds YAML
    // with discovery.lua and one definition per action.
    let cm: Json = serde_saphyr::from_str(&got).expect("argocd-cm.yaml is YAML");
    let data = &cm["data"];
    assert_eq!(
        data["resource.customizations.health.dynamics.bithuman.ai_AgentDynamics"]
            .as_str()
            .unwrap(),
        read(&argocd_dir().join("health.lua"))
    );
    let actions: Json = serde_saphyr::from_str(
        data["resource.customizations.actions.dynamics.bithuman.ai_AgentDynamics"]
            .as_str()
            .unwrap(),
    )
    .expect("the actions value is YAML");
    assert_eq!(
        actions["discovery.lua"].as_str().unwrap(),
        read(&argocd_dir().join("actions/discovery.lua"))
    );
    let definitions = actions["definitions"].as_array().unwrap();
    assert_eq!(definitions.len(), 1);
    assert_eq!(definitions[0]["name"], "refresh");
    assert_eq!(
        definitions[0]["action.lua"].as_str().unwrap(),
        read(&argocd_dir().join("actions/refresh/action.lua"))
    );
}

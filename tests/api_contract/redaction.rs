//! The secret never shows: not in Debug, Display, errors, nor in anything any test of this
//! binary logs.

use std::sync::Mutex;
use std::time::Duration;

use dynamics_operator::api::{ApiSecret, ClientConfig, DynamicsClient, GenerateRequest};
use dynamics_operator::sim;
use dynamics_operator::sim::{Faults, ScriptedFault};

use crate::{assert_redacted, batch, client, config, fast_config, gen_req, script, secret, SECRET};

fn captured_logs() -> &'static Mutex<Vec<u8>> {
    use std::sync::OnceLock;
    use tracing_subscriber::fmt::MakeWriter;

    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();

    struct Sink(&'static Mutex<Vec<u8>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    struct MakeSink(&'static Mutex<Vec<u8>>);
    impl<'a> MakeWriter<'a> for MakeSink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            Sink(self.0)
        }
    }

    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        // Process-wide rather than `set_default`: a thread-local subscriber
        // races with other test threads over tracing's cached callsite interest.
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(MakeSink(buf))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        buf
    })
}

#[tokio::test]
async fn secret_never_appears_in_debug_display_errors_or_logs() {
    let logs = captured_logs();

    let s = secret();
    assert_eq!(format!("{s:?}"), "ApiSecret(***)");
    assert_eq!(format!("{s}"), "***");

    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    assert!(!format!("{c:?}").contains(SECRET));

    let mut errors = Vec::new();
    c.generate(&s, &gen_req("L"), Some("k")).await.unwrap();
    c.get(&s, "L").await.unwrap();
    c.update(&s, "L", &batch("wave", "https://v/w.mp4"))
        .await
        .unwrap();
    errors.push(c.get(&ApiSecret::new("wrong"), "L").await.unwrap_err());
    errors.push(
        c.generate(
            &s,
            &GenerateRequest {
                duration: Some(99),
                ..gen_req("L")
            },
            None,
        )
        .await
        .unwrap_err(),
    );
    sim.mark_unknown("Z");
    errors.push(c.get(&s, "Z").await.unwrap_err());
    sim.set_faults(script(&[
        ScriptedFault::Internal,
        ScriptedFault::Internal,
        ScriptedFault::Internal,
        ScriptedFault::Internal,
    ]));
    errors.push(c.get(&s, "L").await.unwrap_err());
    sim.set_faults(script(&[ScriptedFault::RateLimited]));
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    sim.set_faults(script(&[ScriptedFault::Unavailable]));
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    sim.set_faults(script(&[ScriptedFault::Drop]));
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    sim.set_faults(Faults::default());
    sim.set_credits(0);
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    let slow = DynamicsClient::new(ClientConfig {
        request_timeout: Duration::from_millis(50),
        max_retries: 0,
        ..fast_config(sim.url())
    })
    .unwrap();
    sim.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    errors.push(slow.get(&s, "L").await.unwrap_err());
    sim.set_faults(Faults::default());

    let kinds: std::collections::BTreeSet<&str> = errors.iter().map(|e| e.reason()).collect();
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    for e in &errors {
        assert_redacted(e);
    }
    sim.shutdown().await;

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("Dynamics API call"), "client logs captured");
    assert!(logs.contains("sim call"), "simulator logs captured");
    assert!(logs.contains("retrying Dynamics API call"));
    assert!(!logs.contains(SECRET), "secret in logs");
}

//! `examples/web_app.rs` under failover: three instance processes (each embedding a node on
//! 127.0.0.x) form one cluster; writes go through every instance while the instance whose node
//! leads is SIGKILLed; the other two keep serving, and every acknowledged write survives.
//!
//! The instance processes are this test binary itself, re-run on the ignored test
//! [`instance_process`] with the instance's configuration in `WEB_APP_INSTANCE`: they run the
//! example's own `serve`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(dead_code)] // the example's `main` and demo are not used here
#[path = "../examples/web_app.rs"]
mod web_app;

use web_app::{configs, leader_index, list_bodies, post_note, Instance, InstanceConfig, INSTANCE_ENV};

const BOUND: Duration = Duration::from_secs(60);

#[test]
#[ignore = "an instance process of the web_app test; runs only when that test starts it"]
fn instance_process() {
    let text = std::env::var(INSTANCE_ENV).expect("started by the web_app test with WEB_APP_INSTANCE set");
    let config = InstanceConfig::parse(&text).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(web_app::serve(config)).unwrap();
}

#[test]
fn three_instances_share_data_and_survive_the_leaders_instance_being_killed() {
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let args = ["--exact", "instance_process", "--ignored", "--nocapture", "--test-threads", "1"];
    let mut instances = Vec::new();
    for (i, config) in configs(3, root.path()).unwrap().into_iter().enumerate() {
        let log = root.path().join(format!("instance{i}.log"));
        instances
            .push(Instance::start(&exe, &args, config, log, BOUND).unwrap_or_else(|e| panic!("instance {i}: {e}")));
    }
    let addrs: Vec<_> = instances.iter().map(|i| i.config.http).collect();
    let logs = |instances: &[Instance]| -> String {
        instances.iter().enumerate().map(|(i, inst)| format!("--- instance {i} ---\n{}\n", inst.log_tail())).collect()
    };

    // A request to any instance reads and writes the same data.
    for (i, addr) in addrs.iter().enumerate() {
        post_note(*addr, &format!("first-{i}"))
            .unwrap_or_else(|| panic!("instance {i} took no write\n{}", logs(&instances)));
    }
    for (i, addr) in addrs.iter().enumerate() {
        let bodies = list_bodies(*addr).unwrap();
        assert_eq!(bodies, ["first-0", "first-1", "first-2"], "instance {i}");
    }

    // A writer round-robins over every instance and records what was acknowledged.
    let acked = Arc::new(Mutex::new(vec!["first-0".to_owned(), "first-1".into(), "first-2".into()]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, addrs) = (acked.clone(), stop.clone(), addrs.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("w{n}");
                if post_note(addrs[n % addrs.len()], &body).is_some() {
                    acked.lock().unwrap().push(body);
                }
                n += 1;
            }
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    let wait_for = |what: &str, target: usize| {
        let start = Instant::now();
        while acked_count() < target {
            assert!(start.elapsed() < BOUND, "timed out waiting for {what}: {} acknowledged", acked_count());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("writes before the kill", 30);

    let leader = leader_index(&instances).unwrap_or_else(|| panic!("no instance's node leads\n{}", logs(&instances)));
    let before = acked_count();
    instances[leader].kill().unwrap();
    eprintln!("killed instance {leader} after {before} acknowledged writes");

    // The survivors keep serving: more writes are acknowledged after the failover.
    wait_for("writes after the kill", before + 30);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len());
    for (i, addr) in addrs.iter().enumerate().filter(|(i, _)| *i != leader) {
        let bodies: HashSet<String> = list_bodies(*addr)
            .unwrap_or_else(|e| panic!("instance {i}: {e}\n{}", logs(&instances)))
            .into_iter()
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|b| !bodies.contains(*b)).collect();
        assert!(lost.is_empty(), "instance {i} lost acknowledged writes {lost:?}\n{}", logs(&instances));
        assert!(post_note(*addr, &format!("last-{i}")).is_some(), "instance {i} still takes writes");
    }
}

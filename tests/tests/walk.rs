//! Reading the kernel's zombie map while reaps delete from it: every walk ends, and no zombie
//! is listed twice in one. Where the kernel has no slot table (5.10) every zombie is in the
//! hash map; here a small slot table sends most of them there too.

use std::{collections::HashSet, sync::mpsc, thread, time::Duration};

use reapwatch::kernel::MapSizes;
use reapwatch_tests::{load_engine, Helper, TestCgroup};
use tracer_common::{ProcessKey, Zombie};

const ZOMBIES: u32 = 3000;
const ROUNDS: usize = 4;

#[test]
fn walks_under_reaps_end_and_list_each_zombie_once() {
    // Slots for a quarter of the map at most: most of the 3000 go to the hash map.
    let engine = load_engine(MapSizes {
        zombies: 4096,
        ..MapSizes::default()
    });
    let cgroup = TestCgroup::new("walk");
    let (mut walks, mut twice) = (0, Vec::new());
    for _ in 0..ROUNDS {
        let mut helper = Helper::start("leak-trickle", ZOMBIES, &cgroup);
        let parent = helper.parent;
        let of_parent = |listed: &[(ProcessKey, Zombie)]| {
            listed
                .iter()
                .filter(|(_, z)| z.parent.tgid == parent)
                .count()
        };
        let before = engine.probes().zombies().expect("walk the zombie maps");
        assert_eq!(
            of_parent(&before),
            ZOMBIES as usize,
            "a walk before the reaps"
        );
        let (reaped_tx, reaped) = mpsc::channel();
        let reaper = thread::spawn(move || {
            helper.step();
            reaped_tx.send(()).expect("the walker waits");
            helper
        });
        // Walk while the reaps (and their frees, a grace period later) delete entries.
        let mut after_reaps = 0;
        while after_reaps < 20 {
            if reaped.try_recv().is_ok() || after_reaps > 0 {
                after_reaps += 1;
            }
            let listed = engine.probes().zombies().expect("walk the zombie maps");
            walks += 1;
            let mut seen = HashSet::new();
            for (key, zombie) in &listed {
                if zombie.parent.tgid == parent && !seen.insert(*key) {
                    twice.push(*key);
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        drop(reaper.join().expect("reaper"));
    }
    assert!(
        twice.is_empty(),
        "{} zombies listed twice in a walk, over {walks} walks: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

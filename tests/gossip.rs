//! Issue 4, with real processes on 127.0.0.1: membership by gossip, table spread, leave and
//! death detection, unique names, and (as root) a partition healed across network namespaces.

mod common;

use std::time::{Duration, Instant};

use common::{Home, Node, PATIENCE, wait_for};

/// `name -> state` as `kvnode members --json` reports it through `via`.
fn members(home: &Home, via: &str) -> Vec<(String, String)> {
    let out = home.run(&["members", "--via", via, "--json"]);
    if out.code != Some(0) {
        return Vec::new();
    }
    out.stdout()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn state_of(home: &Home, via: &str, name: &str) -> Option<String> {
    members(home, via).into_iter().find(|(n, _)| n == name).map(|(_, s)| s)
}

/// `n` nodes, each joining through the one before; they log kvnode's debug lines, which
/// [`logs`] prints when a timed assertion fails.
fn chain(home: &Home, n: usize) -> Vec<Node> {
    let mut nodes = vec![home.start("n1", &["--in-memory", "-v"])];
    for i in 2..=n {
        let prev = format!("n{}", i - 1);
        nodes.push(home.start(&format!("n{i}"), &["--in-memory", "-v", "--join", &prev]));
    }
    nodes
}

/// Every node's log, for the message of a failed assertion.
fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {} ---\n{}", n.name, n.stderr().join("\n")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn all_alive(home: &Home, nodes: &[Node]) -> bool {
    nodes.iter().all(|via| {
        let m = members(home, &via.name);
        nodes
            .iter()
            .all(|n| m.iter().any(|(name, state)| *name == n.name && state == "alive"))
    })
}

#[test]
fn nodes_listening_on_a_wildcard_are_reached_at_the_address_they_advertise() {
    let home = Home::new();
    // Bound to every interface, reached at loopback (given, so that no test traffic goes
    // to this machine's other addresses; port 0 is the port bound).
    let wild = ["--in-memory", "--listen", "0.0.0.0:0", "--advertise", "127.0.0.1:0"];
    let foo = home.start("foo", &wild);
    let bar = home.start("bar", &[&wild[..], &["--join", "foo"]].concat());
    for node in [&foo, &bar] {
        assert!(
            node.addr().ip().is_loopback() && node.addr().port() != 0,
            "{} published {}",
            node.name,
            node.addr()
        );
    }
    let nodes = [foo, bar];
    wait_for("foo and bar to see each other alive", PATIENCE, || {
        all_alive(&home, &nodes).then_some(())
    });
    // bar forwards to foo, the owner of everything, over the address foo gave.
    assert_eq!(home.run(&["put", "b", "k", "v", "--via", "bar"]).ok(), "");
    assert_eq!(home.run(&["get", "b", "k", "--via", "foo"]).ok(), "v\n");
    let out = home.run(&["start", "--name", "baz", "--advertise", "0.0.0.0:4040"]);
    out.expect(2);
    assert!(out.stderr.contains("wildcard"), "{}", out.stderr);
}

/// `name -> last_seen_ms` (`None`: not heard from directly) through `via`.
fn last_seen(home: &Home, via: &str, name: &str) -> Option<Option<u64>> {
    let out = home.run(&["members", "--via", via, "--json"]);
    out.stdout().lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        (v["name"] == name).then(|| v["last_seen_ms"].as_u64())
    })
}

#[test]
fn members_says_when_each_member_was_last_heard_from() {
    let home = Home::new();
    let _n1 = home.start("n1", &["--in-memory"]);
    let mut n2 = home.start("n2", &["--in-memory", "--join", "n1"]);
    // Probed, n2 answers: seen within the last seconds.
    wait_for("n1 to hear from n2", PATIENCE, || {
        last_seen(&home, "n1", "n2").flatten().filter(|&ms| ms < 3_000)
    });
    n2.kill9();
    // Then no more: its last sight only ages, while n1 sees itself now.
    wait_for("n2's last sight to age past 4s", PATIENCE, || {
        last_seen(&home, "n1", "n2").flatten().filter(|&ms| ms > 4_000)
    });
    let me = last_seen(&home, "n1", "n1").flatten().unwrap();
    assert!(me < 2_000, "n1 last saw itself {me}ms ago");
    let text = home.run(&["members", "--via", "n1"]).ok();
    assert!(text.lines().next().unwrap().ends_with("LAST SEEN"), "{text}");
}

#[test]
fn six_nodes_joined_in_a_chain_all_see_each_other_alive() {
    let home = Home::new();
    let nodes = chain(&home, 6);
    wait_for("every node to see all six alive", PATIENCE, || {
        all_alive(&home, &nodes).then_some(())
    });
    let text = home.run(&["members", "--via", "n4"]).ok();
    assert!(
        text.starts_with("NAME") && text.contains("INCARNATION") && text.contains("LAST SEEN"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 7);
    nodes[0].wait_log("a member-up line", |l| l.contains("member up") && l.contains("n6"));
    nodes[5].wait_log("a joined line", |l| l.contains("joined the cluster"));
}

/// Issue 28: a script that starts a cluster all at once (six nodes back to back, each
/// joining the one started just before it, none waited for) has one membership within about
/// 2 s. It took 10 s while a join entry not yet published was looked up again only after
/// `join_retry_max`. The bound here is a liveness bound with room for a loaded machine, not
/// the speed target; the time taken is printed, and `scripts/bench-cluster-start.sh` measures it.
#[test]
fn six_nodes_started_all_at_once_are_one_cluster_within_seconds() {
    let home = Home::new();
    let started = Instant::now();
    let mut nodes = vec![home.spawn_node("n1", &["--name", "n1", "--in-memory", "-v"])];
    for i in 2..=6 {
        let (name, prev) = (format!("n{i}"), format!("n{}", i - 1));
        nodes.push(home.spawn_node(&name, &["--name", &name, "--in-memory", "-v", "--join", &prev]));
    }
    let nodes: Vec<Node> = nodes.into_iter().map(Node::wait_up).collect();
    let deadline = Duration::from_secs(5);
    while !all_alive(&home, &nodes) {
        assert!(
            started.elapsed() < deadline,
            "six nodes started at once were not one cluster within {deadline:?}\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("six nodes started at once: one cluster after {:?}", started.elapsed());
}

#[test]
fn a_table_set_on_one_node_is_answered_by_every_node_within_a_second() {
    let home = Home::new();
    let nodes = chain(&home, 6);
    wait_for("one membership", PATIENCE, || all_alive(&home, &nodes).then_some(()));
    let out = home.run(&["route", "--set", "a-m=n1,n-z=n6", "--via", "n3"]);
    let set = Instant::now();
    out.ok();
    assert!(
        !out.stderr.contains("does not know"),
        "every node named is a member: {}",
        out.stderr
    );
    // Wait for the table itself: a route alone would not tell the new table from a node's
    // own default one (n6 owns everything before the new table reaches it). `route --set`
    // returned once its move was done: version 1 started it, version 2 finished it.
    for n in &nodes {
        wait_for(&format!("{} to hold the new table", n.name), PATIENCE, || {
            let table = home.run(&["route", "--table", "--via", &n.name]).ok();
            // n1 decides every set, the member with the lowest name (issue 22, point 8).
            (table == "# version 2, set by n1\na-m=n1\nn-z=n6\n").then_some(())
        });
    }
    let took = set.elapsed();
    println!("the new table was answered by all 6 nodes {took:?} after it was set");
    assert!(took < Duration::from_secs(1), "{took:?}\n{}", logs(&nodes));
    for n in &nodes {
        assert_eq!(home.run(&["route", "world", "--via", &n.name]).ok().trim(), "n6");
        assert_eq!(home.run(&["route", "apple", "--via", &n.name]).ok().trim(), "n1");
    }
    nodes[0].wait_log("the table change", |l| {
        l.contains("routing table changed") && l.contains("setter=\"n1\"")
    });
}

#[test]
fn sigterm_is_seen_as_left_within_two_seconds() {
    let home = Home::new();
    let mut nodes = chain(&home, 4);
    wait_for("one membership", PATIENCE, || all_alive(&home, &nodes).then_some(()));
    let mut leaver = nodes.pop().unwrap();
    let start = Instant::now();
    leaver.signal(libc::SIGTERM);
    for n in &nodes {
        wait_for(&format!("{} to see n4 left", n.name), PATIENCE, || {
            (state_of(&home, &n.name, "n4").as_deref() == Some("left")).then_some(())
        });
    }
    let took = start.elapsed();
    println!("SIGTERM seen as left by every member after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}\n{}", logs(&nodes));
    assert_eq!(leaver.wait_exit().code(), Some(0));
}

#[test]
fn kill_9_is_seen_as_dead_by_every_member_within_ten_seconds() {
    let home = Home::new();
    let mut nodes = chain(&home, 5);
    wait_for("one membership", PATIENCE, || all_alive(&home, &nodes).then_some(()));
    let mut victim = nodes.remove(2);
    let start = Instant::now();
    victim.kill9();
    for n in &nodes {
        wait_for(&format!("{} to see n3 dead", n.name), PATIENCE, || {
            (state_of(&home, &n.name, "n3").as_deref() == Some("dead")).then_some(())
        });
    }
    let took = start.elapsed();
    println!("kill -9 seen as dead by every member after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}\n{}", logs(&nodes));
    // Requests for buckets it owned fail at once with exit 3, naming it.
    // --force: a table naming a dead node moves nothing (a move onto it would be refused).
    home.run(&["route", "--set", "a-z=n3", "--via", "n1", "--force"]).ok();
    wait_for("the table to reach n5", PATIENCE, || {
        home.run(&["route", "--table", "--via", "n5"])
            .ok()
            .contains("a-z=n3")
            .then_some(())
    });
    let out = home.run(&["get", "b", "k", "--via", "n5"]);
    out.expect(3);
    assert!(
        out.stderr.contains("node n3") && out.stderr.contains("dead"),
        "{}",
        out.stderr
    );
    // A client asking for n3 by name is told it is dead, not that no such node exists.
    let out = home.run(&["ping", "n3"]);
    out.expect(3);
    assert!(
        out.stderr.contains("node n3 (") && out.stderr.contains("says it is dead"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_node_killed_and_restarted_on_its_address_joins_at_the_first_attempt() {
    let home = Home::new();
    let n1 = home.start("n1", &["--in-memory", "-v"]);
    // A first attempt that is merely slow (a loaded machine) is not what this test is about:
    // it may take 10 s; one answered on the dead process's connection never comes.
    let config = home.write_file("n2.toml", "[gossip]\njoin_timeout = \"10s\"\n");
    let args = [
        "--in-memory",
        "-v",
        "--join",
        "n1",
        "--config",
        config.to_str().unwrap(),
    ];
    let mut n2 = home.start("n2", &args);
    let addr = n2.addr().to_string();
    wait_for("n1 to see n2", PATIENCE, || {
        (state_of(&home, "n1", "n2").as_deref() == Some("alive")).then_some(())
    });
    // Each round: back on the same address before n1 has noticed anything, so n1 still
    // holds its connection to the dead process and must not answer the new one's join on it.
    // (Whether n1 happened to send on the old connection first, which resets it, is up to
    // timing: before the fix, about half the rounds failed.)
    for _ in 0..3 {
        n2.kill9();
        n2 = home.start("n2", &[&args[..], &["--listen", &addr]].concat());
        n2.wait_log("n2 to join", |l| l.contains("joined the cluster"));
        let retried: Vec<String> = n2
            .stderr()
            .into_iter()
            .filter(|l| l.contains("could not join"))
            .collect();
        assert!(retried.is_empty(), "{retried:#?}\n{}", logs(&[n1, n2]));
    }
}

#[test]
fn a_node_replaced_while_it_was_cut_off_stops_when_it_comes_back() {
    // The replacement starts in another home (this home's directory would refuse a second
    // g2 while the first one's process exists), with the same secret.
    let (home, other_home, s) = common::two_homes_one_secret();
    let s = s.as_str();
    let g1 = home.start("g1", &["--in-memory", "--secret-file", s]);
    // It learns of its replacement from the first member it talks to, not from a full-state
    // exchange: with none due for a minute, those cannot be what tells it.
    let slow = home.write_file("slow.toml", "[gossip]\npush_pull_interval = \"60s\"\n");
    let old_args = [
        "--in-memory",
        "--secret-file",
        s,
        "--join",
        "g1",
        "-v",
        "--config",
        slow.to_str().unwrap(),
    ];
    let mut old = home.start("g2", &old_args);
    let members_of_g1 = || home.run(&["members", "--via", "g1", "--secret-file", s]).stdout();
    wait_for("g1 to see g2", PATIENCE, || {
        members_of_g1().contains("alive").then_some(())
    });
    // Paused past the suspicion timeout, like a VM stall or a partition: declared dead.
    old.signal(libc::SIGSTOP);
    wait_for("g1 to see g2 dead", PATIENCE, || {
        members_of_g1()
            .lines()
            .any(|l| l.starts_with("g2 ") && l.contains(" dead "))
            .then_some(())
    });
    let new = other_home.start("g2", &["--in-memory", "--secret-file", s, "--join", &g1.full()]);
    let new_addr = new.addr().to_string();
    wait_for("g1 to see the new g2", PATIENCE, || {
        members_of_g1()
            .lines()
            .any(|l| l.starts_with("g2 ") && l.contains(&new_addr) && l.contains(" alive "))
            .then_some(())
    });
    // Back, it learns the cluster has a newer g2 and stops rather than serve g2's buckets too.
    old.signal(libc::SIGCONT);
    let status = old.wait_exit();
    assert!(!status.success(), "{status}");
    let log = old.stderr().join("\n");
    assert!(log.contains("a newer process has this node's name"), "{log}");
    // The newer one goes on.
    assert_eq!(other_home.run(&["ping", "g2", "--secret-file", s]).ok(), "pong\n");
}

#[test]
fn a_node_that_has_not_joined_yet_takes_no_bucket_requests() {
    let home = Home::new();
    // Its seed never answers: until it hears the cluster's table, a write it took could
    // belong to any member, and would be lost from view once it joined.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let seed = silent.local_addr().unwrap().to_string();
    let late = home.start("late", &["--in-memory", "--join", &seed]);
    // Its start-up line does not show a table it will never route by.
    late.wait_log("node up", |l| l.contains("node up") && l.contains("table=none yet"));
    let out = home.run(&["put", "cart", "apples", "5"]);
    out.expect(5);
    assert!(
        out.stderr.contains("node late has not joined its cluster yet"),
        "{}",
        out.stderr
    );
    let table = home.run(&["route", "--table"]).ok();
    assert!(table.starts_with("# no table set"), "{table}");
    // Told to join only itself, a node starts the cluster and owns everything.
    let _solo = home.start("solo", &["--in-memory", "--join", "solo"]);
    wait_for("solo to take every bucket", PATIENCE, || {
        (home.run(&["put", "cart", "apples", "5", "--via", "solo"]).code == Some(0)).then_some(())
    });
}

#[test]
fn nodes_that_join_each_other_without_a_table_serve_once_joined() {
    // The usual config where every node lists the others; the second is started before the
    // first exists, so its join name is found only when looked up again.
    let home = Home::new();
    let retry = home.write_file("retry.toml", "[gossip]\njoin_retry_max = \"500ms\"\n");
    let config = ["--in-memory", "--config", retry.to_str().unwrap()];
    let _b = home.start("b", &[&config[..], &["--join", "a"]].concat());
    let _a = home.start("a", &[&config[..], &["--join", "b"]].concat());
    for via in ["a", "b"] {
        wait_for(&format!("{via} to take a put"), PATIENCE, || {
            (home.run(&["put", "cart", "apples", "5", "--via", via]).code == Some(0)).then_some(())
        });
    }
    // One owner for the bucket, whichever node is asked.
    assert_eq!(
        home.run(&["route", "cart", "--via", "a"]).ok(),
        home.run(&["route", "cart", "--via", "b"]).ok()
    );
}

#[test]
fn a_node_whose_seed_never_answers_stops_at_once() {
    let home = Home::new();
    // Nothing listens there: each join attempt waits out its 3 s, retried in the background.
    let mut n1 = home.start("n1", &["--in-memory", "--join", "127.0.0.1:9"]);
    let asked = Instant::now();
    assert!(n1.terminate().success());
    // It used to wait for the pending attempts (and start new ones) until the shutdown
    // deadline: 8.5 s. Now the endpoint's half-second close is most of it.
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "stopping took {took:?}");
}

#[test]
fn a_node_joining_with_another_secret_is_told_the_secrets_differ() {
    // Two homes, two secrets.
    let (home, elsewhere) = (Home::new(), Home::new());
    let foo = home.start("foo", &["--in-memory"]);
    let x = elsewhere.start("x", &["--in-memory", "--join", &foo.full()]);
    // Not "no answer within 3s", which sends the operator looking at the network.
    let line = x.wait_log("the join to report the refused secret", |l| {
        l.contains("refused this node's secret")
    });
    assert!(line.contains("KVNODE_SECRET"), "{line}");
}

#[test]
fn a_name_looked_up_through_gossip_with_a_wrong_secret_is_an_authentication_error() {
    // gb lives in another home: this one finds it only through ga's membership.
    let (home, elsewhere, s) = common::two_homes_one_secret();
    let s = s.as_str();
    let ga = home.start("ga", &["--in-memory", "--secret-file", s]);
    let _gb = elsewhere.start("gb", &["--in-memory", "--secret-file", s, "--join", &ga.full()]);
    wait_for("gb to be found through ga", PATIENCE, || {
        (home.run(&["ping", "gb", "--secret-file", s]).code == Some(0)).then_some(())
    });
    let wrong = home.write_file("wrong", "not the secret");
    let out = home.run(&["get", "b", "k", "--via", "gb", "--secret-file", wrong.to_str().unwrap()]);
    // Not "no node named gb" (exit 3), which sends the user to fix a name that is right.
    out.expect(4);
    assert!(
        out.stderr.contains("authentication refused by node ga"),
        "{}",
        out.stderr
    );
    // But a node of another cluster here refusing our secret, while one of ours answered
    // that it knows no such name, leaves a typo a typo.
    let theirs = home.write_file("theirs", "another cluster");
    let _other = home.start("other", &["--in-memory", "--secret-file", theirs.to_str().unwrap()]);
    let out = home.run(&["get", "b", "k", "--via", "gbb", "--secret-file", s]);
    out.expect(3);
    assert!(out.stderr.contains("no node named \"gbb\""), "{}", out.stderr);
}

#[test]
fn a_join_entry_naming_another_node_than_the_one_there_is_not_joined_through() {
    let home = Home::new();
    let alex = home.start("alex", &["--in-memory"]);
    let wrong = format!("wrongname@{}", alex.addr());
    let j1 = home.start("j1", &["--in-memory", "--join", &wrong]);
    // As `--via wrongname@ADDR` is refused by a client.
    j1.wait_log("the join to name the node there", |l| {
        l.contains("is named alex, not wrongname")
    });
    assert_eq!(state_of(&home, "alex", "j1"), None, "j1 did not join");
}

#[test]
fn a_node_whose_peer_died_stops_at_once() {
    let home = Home::new();
    let mut t1 = home.start("t1", &["--in-memory"]);
    let mut t2 = home.start("t2", &["--in-memory", "--join", "t1"]);
    wait_for("t2 to see t1", PATIENCE, || {
        (state_of(&home, "t2", "t1").as_deref() == Some("alive")).then_some(())
    });
    t1.kill9();
    // Dead to t2, so that its leaving has nobody to wait for.
    wait_for("t2 to see t1 dead", PATIENCE, || {
        (state_of(&home, "t2", "t1").as_deref() == Some("dead")).then_some(())
    });
    let asked = Instant::now();
    assert!(t2.terminate().success());
    // The streams t1 had opened waited for t1 to acknowledge their last answers, which it
    // never would, until the shutdown deadline: 10 s.
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "stopping took {took:?}");
}

#[test]
fn a_table_naming_a_node_nobody_knows_is_set_with_a_warning() {
    let home = Home::new();
    let _n1 = home.start("n1", &["--in-memory"]);
    // Refused without --force (issue 22, point 8): tests/cli.rs covers that.
    let out = home.run(&["route", "--set", "a-m=n1,n-z=nobdy", "--force"]);
    // Set (the node may be about to join), but the likely typo is pointed out.
    assert!(out.ok().starts_with("# version 1, set by n1"));
    assert!(
        out.stderr.contains("the table names nobdy, which n1 (")
            && out.stderr.contains("does not know as a live member"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("names n1,"), "{}", out.stderr);
}

#[test]
fn a_name_already_alive_in_the_cluster_is_refused_on_both_sides() {
    let home = Home::new();
    let nodes = chain(&home, 2);
    wait_for("one membership", PATIENCE, || all_alive(&home, &nodes).then_some(()));
    // Another machine's n2: another home (so the local directory cannot refuse it), same secret.
    let other = Home::new();
    std::fs::copy(home.secret_path(), other.secret_path()).unwrap();
    let mut impostor = other.spawn_node("n2", &["--name", "n2", "--in-memory", "--join", &nodes[0].full()]);
    assert_eq!(impostor.wait_exit().code(), Some(2));
    let log = impostor.stderr().join("\n");
    assert!(
        log.contains("the cluster refused this node") && log.contains("the name n2 is taken"),
        "{log}"
    );
    nodes[0].wait_log("the refusal on the seed's side", |l| {
        l.contains("refused a node joining") && l.contains("joiner=n2")
    });
    assert_eq!(state_of(&home, "n1", "n2").as_deref(), Some("alive"));
}

#[test]
fn names_learned_by_gossip_route_requests_and_resolve_via() {
    // n1 here; far in another home: neither is in the other's node directory or [peers].
    let (home, far_home, s) = common::two_homes_one_secret();
    let s = s.as_str();
    let n1 = home.start("n1", &["--in-memory", "--secret-file", s, "--table", "a-m=n1,n-z=far"]);
    let _far = far_home.start("far", &["--in-memory", "--secret-file", s, "--join", &n1.full()]);
    wait_for("n1 to see far", PATIENCE, || {
        (home
            .run(&["members", "--via", "n1", "--secret-file", s])
            .stdout()
            .contains("far"))
        .then_some(())
    });
    home.run(&["put", "world", "k", "v", "--via", "n1", "--secret-file", s])
        .ok();
    assert_eq!(
        far_home
            .run(&["get", "world", "k", "--via", "far", "--secret-file", s])
            .ok(),
        "v\n"
    );
    // A client in n1's home finds `far` by name through n1's membership.
    assert_eq!(
        home.run(&["get", "world", "k", "--via", "far", "--secret-file", s])
            .ok(),
        "v\n"
    );
    assert_eq!(home.run(&["ping", "far", "--secret-file", s]).ok(), "pong\n");
}

#[test]
fn ping_says_pong_or_pang() {
    let home = Home::new();
    let n1 = home.start("n1", &["--in-memory"]);
    assert_eq!(home.run(&["ping", "n1"]).ok(), "pong\n");
    let addr = n1.addr().to_string();
    drop(n1);
    let out = home.run(&["ping", &addr, "--timeout", "1s"]);
    out.expect(3);
    assert_eq!(out.stdout(), "pang\n");
    // The reason names the --timeout given, not what was left of it.
    assert!(
        out.stderr.contains("no answer from node") && out.stderr.contains("within 1s;"),
        "{}",
        out.stderr
    );
    // Said once, not wrapped in another "unreachable" nor logged besides.
    assert_eq!(out.stderr.matches("no answer from node").count(), 1, "{}", out.stderr);
    // A wrong secret is pang too, but exit 4, as every client's (SPEC §3), with §3's message:
    // a script must not restart a healthy node for a secret mistake of its own.
    let _n2 = home.start("n2", &["--in-memory"]);
    let wrong = home.write_file("wrong-secret", "not the secret");
    let out = home.run(&["ping", "n2", "--secret-file", wrong.to_str().unwrap()]);
    out.expect(4);
    assert_eq!(out.stdout(), "pang\n");
    assert!(
        out.stderr.contains("authentication refused by node n2") && out.stderr.contains("the secrets differ"),
        "{}",
        out.stderr
    );
    // A secret that cannot even be read: nothing was pinged, a usage error like any command's.
    let out = home.run(&["ping", "n2", "--secret-file", "/nonexistent/secret"]);
    out.expect(2);
    assert_eq!(out.stdout(), "");
}

// ---------------------------------------------------------------------------------------------
// A partition across network namespaces (root only).

struct Netns {
    names: [String; 2],
}

impl Netns {
    /// Two namespaces joined by a veth pair: 10.77.X.1 in the first, 10.77.X.2 in the second.
    fn pair(tag: u8) -> Option<Self> {
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: the partition test makes network namespaces, which needs root (CI runs as root)");
            return None;
        }
        let pid = std::process::id();
        let names = [format!("kvA{pid}"), format!("kvB{pid}")];
        let (a, b) = (&names[0], &names[1]);
        let (va, vb) = (format!("va{pid}"), format!("vb{pid}"));
        let net = Self { names: names.clone() };
        let ok = [
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
        ]
        .iter()
        .all(|args| ip(args));
        let addr_a = format!("10.77.{tag}.1/24");
        let addr_b = format!("10.77.{tag}.2/24");
        let ok = ok
            && ip(&["-n", a, "addr", "add", &addr_a, "dev", &va])
            && ip(&["-n", b, "addr", "add", &addr_b, "dev", &vb])
            && ip(&["-n", a, "link", "set", &va, "up"])
            && ip(&["-n", b, "link", "set", &vb, "up"])
            && ip(&["-n", a, "link", "set", "lo", "up"])
            && ip(&["-n", b, "link", "set", "lo", "up"]);
        if !ok {
            println!("skipped: this machine would not make network namespaces and a veth pair (ip netns)");
            return None;
        }
        Some(net)
    }

    fn link(&self, up: bool) {
        let pid = std::process::id();
        let state = if up { "up" } else { "down" };
        assert!(ip(&["-n", &self.names[0], "link", "set", &format!("va{pid}"), state]));
    }
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn a_partition_across_network_namespaces_heals_into_one_membership() {
    let Some(net) = Netns::pair(1) else { return };
    let home = Home::new();
    let (na, nb) = (&net.names[0], &net.names[1]);
    let a1 = home.start_in(na, "a1", &["--in-memory", "--listen", "10.77.1.1:0"]);
    let a2 = home.start_in(
        na,
        "a2",
        &["--in-memory", "--listen", "10.77.1.1:0", "--join", &a1.full()],
    );
    let b1 = home.start_in(
        nb,
        "b1",
        &["--in-memory", "--listen", "10.77.1.2:0", "--join", &a1.full()],
    );
    let b2 = home.start_in(
        nb,
        "b2",
        &["--in-memory", "--listen", "10.77.1.2:0", "--join", &b1.full()],
    );
    let nodes = [&a1, &a2, &b1, &b2];
    let view = |via: &Node, ns: &str| -> Vec<(String, String)> {
        let out = home
            .command_in(ns)
            .args(["members", "--json", "--via", &via.full()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or("").to_string(),
                    v["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let ns_of = |n: &Node| {
        if n.name.starts_with('a') {
            na.as_str()
        } else {
            nb.as_str()
        }
    };
    let one_membership = || {
        nodes.iter().all(|via| {
            let m = view(via, ns_of(via));
            nodes
                .iter()
                .all(|n| m.iter().any(|(name, s)| *name == n.name && s == "alive"))
        })
    };
    wait_for("one membership before the cut", PATIENCE, || {
        one_membership().then_some(())
    });
    net.link(false);
    // Longer than the suspicion timeout: each side marks the other dead.
    wait_for("a1 to see b1 and b2 dead", Duration::from_secs(60), || {
        let m = view(&a1, na);
        ["b1", "b2"]
            .iter()
            .all(|b| m.iter().any(|(n, s)| n == b && s == "dead"))
            .then_some(())
    });
    wait_for("b2 to see a1 and a2 dead", Duration::from_secs(60), || {
        let m = view(&b2, nb);
        ["a1", "a2"]
            .iter()
            .all(|a| m.iter().any(|(n, s)| n == a && s == "dead"))
            .then_some(())
    });
    net.link(true);
    let healed = Instant::now();
    wait_for("one membership after healing", Duration::from_secs(60), || {
        one_membership().then_some(())
    });
    let took = healed.elapsed();
    println!("the partition healed into one membership {took:?} after the link came back");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// `name -> (state, addr)` as `kvnode members --json` reports it through `via`.
fn members_at(home: &Home, via: &str) -> Vec<(String, String, String)> {
    let out = home.run(&["members", "--via", via, "--json", "--timeout", "2s"]);
    if out.code != Some(0) {
        return Vec::new();
    }
    out.stdout()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let field = |k: &str| v[k].as_str().unwrap().to_string();
            (field("name"), field("state"), field("addr"))
        })
        .collect()
}

/// Every node sees every node alive, at the address it published.
fn whole_at_their_addresses(home: &Home, nodes: &[&Node]) -> bool {
    nodes.iter().all(|via| {
        let m = members_at(home, &via.name);
        nodes.iter().all(|n| {
            let addr = n.addr().to_string();
            m.iter()
                .any(|(name, state, at)| *name == n.name && state == "alive" && *at == addr)
        })
    })
}

/// Issue 22 point 10: three durable nodes, the first started with no `--join`; it is stopped
/// (`kill -9`, or SIGTERM when `gently`) and started again exactly as it was. Returns how
/// long after its restart the three saw each other alive again.
fn first_node_restarted_rejoins(gently: bool) -> Duration {
    let home = Home::new();
    let mut n1 = home.start("n1", &["-v"]);
    let n2 = home.start("n2", &["-v", "--join", "n1"]);
    let n3 = home.start("n3", &["-v", "--join", "n1"]);
    wait_for("one membership", PATIENCE, || {
        whole_at_their_addresses(&home, &[&n1, &n2, &n3]).then_some(())
    });
    // Every bucket is n1's: it started the cluster with the table it made for itself.
    home.run(&["put", "cart", "apples", "5", "--via", "n2"]).ok();
    if gently {
        assert!(n1.terminate().success());
    } else {
        n1.kill9();
    }
    let n1 = home.start("n1", &["-v"]);
    let restarted = Instant::now();
    let nodes = [&n1, &n2, &n3];
    wait_for("the three to see each other alive again", PATIENCE, || {
        whole_at_their_addresses(&home, &nodes).then_some(())
    });
    let took = restarted.elapsed();
    println!(
        "after {}, the first node restarted was seen alive by all after {took:?}",
        if gently { "SIGTERM" } else { "kill -9" }
    );
    assert!(
        took < Duration::from_secs(10),
        "{took:?}\n{}",
        nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.stderr().join("\n")))
            .collect::<String>()
    );
    // Its buckets are served through every node, its data kept.
    for via in ["n1", "n2", "n3"] {
        assert_eq!(
            home.run(&["get", "cart", "apples", "--via", via]).ok(),
            "5\n",
            "via {via}"
        );
        home.run(&["put", "cart", via, "1", "--via", via]).ok();
    }
    took
}

#[test]
fn the_first_node_killed_and_restarted_as_it_was_rejoins_its_cluster() {
    first_node_restarted_rejoins(false);
}

#[test]
fn the_first_node_stopped_and_restarted_as_it_was_rejoins_its_cluster() {
    first_node_restarted_rejoins(true);
}

#[test]
fn a_node_whose_old_port_is_taken_says_so_and_listens_on_another() {
    let home = Home::new();
    let mut n1 = home.start("n1", &[]);
    let old = n1.addr();
    n1.kill9();
    // Someone else has its port now.
    let squatter = std::net::UdpSocket::bind(old).unwrap();
    let n1 = home.start("n1", &[]);
    assert_ne!(n1.addr(), old);
    n1.wait_log("the fallback said", |l| {
        l.contains(&old.to_string()) && l.contains("taken") && l.contains("new random port")
    });
    assert_eq!(home.run(&["ping", "n1"]).ok(), "pong\n");
    drop(squatter);
    // And it keeps the port it has now.
    let mut n1 = n1;
    let now = n1.addr();
    assert!(n1.terminate().success());
    assert_eq!(home.start("n1", &[]).addr(), now);
}

#[test]
fn a_restarted_node_whose_saved_members_are_all_gone_serves_at_once() {
    let home = Home::new();
    let mut n1 = home.start("n1", &["-v"]);
    let mut n2 = home.start("n2", &["-v", "--join", "n1"]);
    wait_for("n1 to see n2", PATIENCE, || {
        (state_of(&home, "n1", "n2").as_deref() == Some("alive")).then_some(())
    });
    n2.kill9();
    n1.kill9();
    let n1 = home.start("n1", &["-v"]);
    // Not held up by the seed it cannot reach: it serves its buckets at once.
    let out = home.run(&["put", "cart", "apples", "5", "--via", "n1"]);
    out.expect(0);
    assert!(out.elapsed < Duration::from_secs(3), "{:?}", out.elapsed);
    // Said once, quietly retried after.
    n1.wait_log("the failed rejoin", |l| {
        l.contains("could not rejoin through this member")
    });
    let loud = n1.stderr().iter().filter(|l| l.contains("could not join")).count();
    assert_eq!(loud, 0, "{}", n1.stderr().join("\n"));
}

//! Issue 25: table entries that name several nodes (`a-m=foo+bar+baz`) are read at start
//! (flag and config file) and checked; once a cluster runs, `route --set` may reorder a
//! replicated entry's nodes but not make, change or drop one (moving data is issue 26's);
//! one-node tables work as they always did, and `route --json` names a range's replicas.

mod common;

use std::time::Duration;

use common::Home;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

const SET_AT_START: &str = "a replicated range is set when the cluster starts";

#[test]
fn a_replicated_table_is_taken_at_start_from_the_flag_or_the_config_file() {
    let home = Home::new();
    let _foo = home.start("foo", &["--table", "a-m=foo+bar,n-z=baz", "--in-memory"]);
    let config = home.write_file(
        "bar.toml",
        "name = \"bar\"\nrouting_table = [\"a-m=foo+bar\", \"n-z=baz\"]\nin_memory = true\njoin = [\"foo\"]\n",
    );
    let _bar = home.start_raw("bar", &["--config", config.to_str().unwrap()]);
    for via in ["foo", "bar"] {
        let table = home.run(&["route", "--table", "--via", via]).ok();
        assert_eq!(
            table.lines().skip(1).collect::<Vec<_>>(),
            ["a-m=foo+bar", "n-z=baz"],
            "asked {via}"
        );
    }
}

#[test]
fn bad_replica_lists_are_refused_at_start_naming_the_entry() {
    let home = Home::new();
    for (table, said) in [
        ("a-m=foo+bar+foo", r#""a-m=foo+bar+foo" names foo twice"#),
        (
            "a-z=n1+n2+n3+n4+n5+n6+n7+n8",
            "names 8 nodes; a range has at most 7 replicas",
        ),
        ("a-z=foo++bar", r#""a-z=foo++bar": replica 2 is empty"#),
    ] {
        let out = home.run(&["start", "--name", "foo", "--table", table]);
        out.expect(2);
        assert!(out.stderr.contains(said), "{table}: {}", out.stderr);
    }
}

#[test]
fn route_set_may_not_make_a_replicated_range_and_the_table_stays() {
    let home = Home::new();
    let _foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let _bar = home.start("bar", &["--table", "a-m=foo,n-z=bar", "--join", "foo"]);
    // Each knows the other, so the refusal is the table's, not the membership's.
    for via in ["foo", "bar"] {
        common::wait_for("both members", common::PATIENCE, || {
            let m = home.run(&["members", "--via", via]).ok();
            (m.contains("foo") && m.contains("bar")).then_some(())
        });
    }
    let before = home.run(&["route", "--table", "--via", "foo"]).ok();
    for extra in [&[][..], &["--force"]] {
        let mut args = vec!["route", "--set", "a-m=foo+bar,n-z=bar+foo", "--via", "foo"];
        args.extend_from_slice(extra);
        let out = home.run(&args);
        out.expect(2);
        assert!(out.stderr.contains(SET_AT_START), "{}", out.stderr);
        assert!(out.stderr.contains("a-m=foo+bar"), "{}", out.stderr);
    }
    let out = home.run(&["route", "--set", "a-z=foo+bar", "--via", "bar", "--json"]);
    out.expect(2);
    let said = json(&out.stdout());
    assert_eq!(said["code"], 2);
    assert!(said["error"].as_str().unwrap().contains(SET_AT_START), "{said}");
    // The entries are untouched (the version line may show which start's table gossip kept).
    let entries = |table: String| table.lines().skip(1).collect::<Vec<_>>().join("\n");
    for via in ["foo", "bar"] {
        let now = home.run(&["route", "--table", "--via", via]).ok();
        assert_eq!(entries(now), entries(before.clone()), "asked {via}");
    }
}

#[test]
fn route_set_may_reorder_a_replicated_range_but_not_change_it() {
    let home = Home::new();
    let table = "a-m=foo+bar,n-z=bar";
    let _foo = home.start("foo", &["--table", table, "--in-memory"]);
    let _bar = home.start("bar", &["--table", table, "--in-memory", "--join", "foo"]);
    let out = home.run(&["route", "--set", "a-m=foo,n-z=bar", "--via", "foo"]);
    out.expect(2);
    assert!(
        out.stderr.contains("would change the replicated range a-m=foo+bar"),
        "{}",
        out.stderr
    );
    home.run(&["route", "--set", "a-m=bar+foo,n-z=foo", "--via", "bar"])
        .ok();
    common::wait_for("the reordered table on foo", common::PATIENCE, || {
        let now = home.run(&["route", "--table", "--via", "foo"]).ok();
        (now.lines().skip(1).collect::<Vec<_>>() == ["a-m=bar+foo", "n-z=foo"]).then_some(())
    });
}

/// A client that skips its own check (an older or hand-made one) is refused by the node.
#[test]
fn a_node_refuses_a_new_replicated_range_sent_on_the_wire() {
    let home = Home::new();
    let foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let secret = kvnode::secret::SecretSource::Home(home.secret_path()).load().unwrap();
        let target = kvnode::client::Target {
            addr: foo.addr(),
            name: None,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let client = kvnode::client::Client::connect_with(&secret, "test", &target, deadline)
            .await
            .unwrap();
        let request = kvnode::wire::Request::SetTableIf {
            entries: vec!["a-z=foo+bar".parse().unwrap()],
            expected: 1,
            forwarded: false,
        };
        client.call(request).await.unwrap_err()
    });
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains(SET_AT_START), "{err}");
    assert_eq!(
        home.run(&["route", "--table", "--via", "foo"]).ok(),
        "# version 1, set by foo\na-m=foo\nn-z=bar\n"
    );
}

#[test]
fn route_json_names_the_one_replica_of_a_single_node_range_as_its_leader() {
    let home = Home::new();
    let _foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let _bar = home.start("bar", &["--table", "a-m=foo,n-z=bar"]);
    for (bucket, owner) in [("hello", "foo"), ("world", "bar")] {
        for via in ["foo", "bar"] {
            let route = json(&home.run(&["route", bucket, "--via", via, "--json"]).ok());
            assert_eq!(route["bucket"], bucket);
            assert_eq!(route["replicas"], serde_json::json!([owner]), "{route}");
            assert_eq!(route["leader"], owner, "{route}");
            // What it printed before stays.
            assert_eq!(route["owner"], owner, "{route}");
            assert_eq!(route["state"], "alive", "{route}");
            assert_eq!(route["path"].as_array().unwrap().last().unwrap(), owner);
        }
        // The text form is the owner alone, as before.
        assert_eq!(home.run(&["route", bucket, "--via", "foo"]).ok(), format!("{owner}\n"));
    }
    // The table's JSON has no replica list for one-node entries: it is as it was.
    for line in home.run(&["route", "--table", "--via", "foo", "--json"]).ok().lines() {
        let entry = json(line);
        assert!(entry.get("replicas").is_none(), "{entry}");
        assert!(entry["node"] == "foo" || entry["node"] == "bar", "{entry}");
    }
}

/// The owner down: the node asked answers from its own table, replicas included.
#[test]
fn route_json_of_an_unreachable_owner_still_names_its_replicas() {
    let home = Home::new();
    let _foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let route = json(&home.run(&["route", "world", "--via", "foo", "--json"]).ok());
    assert_eq!(route["owner"], "bar", "{route}");
    assert_eq!(route["replicas"], serde_json::json!(["bar"]), "{route}");
    assert_eq!(route["leader"], "bar", "{route}");
    assert_ne!(route["state"], "alive", "{route}");
}

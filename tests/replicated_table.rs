//! Issue 25: table entries that name several nodes (`a-m=foo+bar+baz`) are read at start
//! (flag and config file) and checked; one-node tables work as they always did, and
//! `route --json` names a range's replicas. (Changing a range's nodes moves it: tests/moves.rs.)

mod common;

use common::Home;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

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

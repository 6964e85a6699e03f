//! The routing table's unit tests: parsing, checks, order, and its gossip decode.
use super::*;

fn table(spec: &str) -> RoutingTable {
    RoutingTable::parse([spec], 1, "test").unwrap()
}

fn name(n: &str) -> NodeName {
    NodeName::new(n).unwrap()
}

#[test]
fn the_tutorial_table_routes_hello_to_foo_and_world_to_bar() {
    let t = table("a-m=foo,n-z=bar");
    assert_eq!(t.owner_of(b"hello"), Some(&name("foo")));
    assert_eq!(t.owner_of(b"world"), Some(&name("bar")));
    assert_eq!(t.owner_of(b"\x00"), None);
    assert_eq!(t.owner_of(b""), None);
    assert!(
        t.no_entry_message(b"\x00")
            .starts_with(r#"could not find entry for "\x00" in routing table [a-m=foo, n-z=bar] (version 1)"#)
    );
}

#[test]
fn a_bucket_outside_every_range_names_its_first_byte_and_how_to_cover_it() {
    let t = table("a-m=foo,n-z=bar");
    let said = t.no_entry_message(b"Apples");
    assert!(
        said.starts_with(r#"could not find entry for "Apples" in routing table [a-m=foo, n-z=bar] (version 1)"#),
        "the guide's words first: {said}"
    );
    assert!(said.contains("first byte 0x41 ('A')"), "{said}");
    assert!(said.contains("add a range") && said.contains("0x00-0xff"), "{said}");
    // A byte that is no printable character is given in hex alone.
    let said = t.no_entry_message(b"\x00");
    assert!(said.contains("first byte 0x00;"), "{said}");
}

#[test]
fn byte_forms_single_characters_and_digits_parse() {
    let t = table("0x00-0x2f=baz, 0-9=qux, x=one, 0x7f=del");
    assert_eq!(t.owner_of(b"\x10"), Some(&name("baz")));
    assert_eq!(t.owner_of(b"5"), Some(&name("qux")));
    assert_eq!(t.owner_of(b"x"), Some(&name("one")));
    assert_eq!(t.owner_of(b"\x7f"), Some(&name("del")));
    assert_eq!(t.owner_of(b"a"), None);
}

#[test]
fn digits_range_is_characters_not_bytes() {
    let t = table("0-9=digits");
    assert_eq!(t.owner_of(b"42"), Some(&name("digits")));
    assert_eq!(t.owner_of(b"\x00"), None);
}

#[test]
fn overlapping_reversed_and_bad_entries_are_refused_with_the_entry_quoted() {
    let err = |s: &str| RoutingTable::parse([s], 1, "t").unwrap_err().to_string();
    assert_eq!(
        err("a-m=foo,k-z=bar"),
        r#"routing entries "a-m=foo" and "k-z=bar" overlap"#
    );
    assert!(err("z-a=foo").contains(r#""z-a=foo" is reversed"#));
    assert!(err("a-m=Foo").contains(r#""a-m=Foo""#));
    assert!(err("a-m").contains("is not RANGE=NODE"));
    assert!(err("a-m=foo=bar").contains(r#""a-m=foo=bar" is not RANGE=NODE"#));
    assert!(err("a-m=foo;n-z=bar").contains(r#""a-m=foo;n-z=bar" is not RANGE=NODE"#));
    assert!(err("a-m=foo=").contains(r#""a-m=foo=" is not RANGE=NODE"#));
    assert!(err("a-m=foo;n-z=Bar").contains(r#""a-m=foo;n-z=Bar" is not RANGE=NODE"#));
    // '=' itself is a byte a range may name.
    assert_eq!(table("==foo,a-z=bar").owner_of(b"=x"), Some(&name("foo")));
    assert_eq!(table("0-==foo").owner_of(b"5"), Some(&name("foo")));
    assert!(err("ab-m=foo").contains("\"ab-m=foo\""));
    assert!(err("0x1-0x20=foo").contains("\"0x1-0x20=foo\""));
    assert!(err("é=foo").contains("\"é\""));
    assert_eq!(err(""), TableError::Empty.to_string());
    assert_eq!(err("  "), TableError::Empty.to_string());
}

#[test]
fn an_empty_entry_is_refused_with_its_place() {
    let err = |specs: &[&str]| {
        RoutingTable::parse(specs.iter().copied(), 1, "t")
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(&["a-m=foo,,n-z=bar"]),
        r#"routing table "a-m=foo,,n-z=bar": entry 2 is empty; remove the extra comma"#
    );
    assert!(err(&["a-m=foo,"]).contains("entry 2 is empty"));
    assert!(err(&[",a-m=foo"]).contains("entry 1 is empty"));
    // A config file's list: an empty string among entries.
    assert!(err(&["a-m=foo", ""]).contains(r#"routing entry "" is not RANGE=NODE"#));
}

#[test]
fn display_round_trips_through_parse() {
    for spec in [
        "a-m=foo,n-z=bar",
        "0x00-0x2c=baz,0x2d=dash,0x80-0xff=hi",
        "0x00-0xff=solo",
    ] {
        let t = table(spec);
        let shown = t.to_string();
        let inner = shown.trim_start_matches('[').trim_end_matches(']');
        let again = RoutingTable::parse([inner.replace(", ", ",").as_str()], 1, "test").unwrap();
        assert_eq!(t, again, "{shown}");
    }
}

#[test]
fn two_different_tables_never_tie() {
    let old = table("a-m=foo,n-z=bar");
    let edited = table("a-k=foo,l-z=bar");
    assert_eq!((old.version(), old.setter()), (edited.version(), edited.setter()));
    // Exactly one of the two wins, whichever node compares them: no split brain.
    assert!(old.supersedes(&edited) != edited.supersedes(&old));
    assert!(!old.supersedes(&old.clone()));
    // Version, then setter, still come first.
    assert!(old.clone().with_version(2, "a").supersedes(&edited));
    assert!(edited.clone().with_version(1, "zzz").supersedes(&old));
}

#[test]
fn bounds_show_as_letters_and_digits_or_in_hex() {
    // As written by the user, not as the punctuation those bytes happen to be.
    let shown = table("0x00-0x60=m1,a-m=m2,n-z=m3,0x7b-0xff=m1").to_string();
    assert!(
        shown.starts_with("[0x00-0x60=m1, a-m=m2, n-z=m3, 0x7b-0xff=m1]"),
        "{shown}"
    );
    assert!(table("!-/=p,0-9=d").to_string().starts_with("[0x21-0x2f=p, 0-9=d]"));
}

#[test]
fn higher_version_then_higher_setter_wins() {
    let a = table("a-z=foo").with_version(2, "alpha");
    let b = table("a-z=bar").with_version(2, "beta");
    let c = table("a-z=baz").with_version(3, "alpha");
    assert!(b.supersedes(&a));
    assert!(!a.supersedes(&b));
    assert!(c.supersedes(&b));
    assert!(!a.supersedes(&a));
}

#[test]
fn a_lone_node_owns_every_first_byte() {
    let t = RoutingTable::owns_everything(&name("solo"));
    for b in 0..=255u8 {
        assert_eq!(t.owner_of(&[b, 1]), Some(&name("solo")));
    }
    assert_eq!(t.version(), 0);
}

#[test]
fn gossip_refuses_an_overlapping_table_at_decode() {
    use std::sync::Arc;

    use kvnode_gossip::{Ident, Message, Sender, SharedTable, Update};
    // A table that could never be built through RoutingTable::new, smuggled through serde.
    let good = RoutingTable::parse(["a-m=foo,n-z=bar"], 4, "foo").unwrap();
    let from = Sender {
        id: Ident::new(name("foo"), "127.0.0.1:4000".parse().unwrap(), 7),
        incarnation: 3,
    };
    let msg: Message<RoutingTable> = Message::Gossip {
        from,
        piggyback: vec![Update::Table(SharedTable(Arc::new(good)))],
    };
    let mut bytes = msg.encode();
    assert!(Message::<RoutingTable>::decode(&bytes).is_ok());
    // Entries are (first, last, name); make n-z start at 'a' so it overlaps a-m.
    let pos = bytes.windows(2).position(|w| w == [b'n', b'z']).unwrap();
    bytes[pos] = b'a';
    assert!(matches!(
        Message::<RoutingTable>::decode(&bytes),
        Err(kvnode_gossip::DecodeError::InvalidTable(_))
    ));
}

fn entry(spec: &str) -> Result<Entry, String> {
    spec.parse::<Entry>().map_err(|e| e.to_string())
}

/// A replicated table as step 4 will build it; `RoutingTable::new` refuses it until then.
fn replicated(entries: &[&str]) -> RoutingTable {
    RoutingTable {
        entries: entries.iter().map(|e| e.parse().unwrap()).collect(),
        version: 1,
        setter: "test".into(),
        moves: Vec::new(),
        generations: Vec::new(),
        ended: Vec::new(),
        then: Vec::new(),
    }
}

#[test]
fn an_entry_names_its_replicas_with_plus_the_first_the_preferred_leader() {
    let e = entry("a-m=foo+bar+baz").unwrap();
    assert_eq!(e.replicas(), [name("foo"), name("bar"), name("baz")]);
    assert_eq!(e.preferred_leader(), &name("foo"));
    assert!(e.is_replicated());
    assert_eq!(e.to_string(), "a-m=foo+bar+baz");
    // Spaces around '+' are read and not shown.
    assert_eq!(entry(" a-m = foo + bar ").unwrap().to_string(), "a-m=foo+bar");
    // '+' is still a byte a range may name.
    assert_eq!(entry("+=foo+bar").unwrap().to_string(), "0x2b=foo+bar");
    let one = entry("a-m=foo").unwrap();
    assert_eq!((one.replicas(), one.is_replicated()), ([name("foo")].as_slice(), false));
}

#[test]
fn a_node_twice_more_than_seven_or_an_empty_name_is_refused_with_the_entry_quoted() {
    assert_eq!(
        entry("a-m=foo+bar+foo").unwrap_err(),
        r#"routing entry "a-m=foo+bar+foo" names foo twice; a range's replicas are distinct nodes"#
    );
    assert_eq!(
        entry("a-m=n1+n2+n3+n4+n5+n6+n7+n8").unwrap_err(),
        r#"routing entry "a-m=n1+n2+n3+n4+n5+n6+n7+n8" names 8 nodes; a range has at most 7 replicas"#
    );
    assert!(entry("a-m=n1+n2+n3+n4+n5+n6+n7").is_ok());
    assert_eq!(
        entry("a-m=foo++bar").unwrap_err(),
        r#"routing entry "a-m=foo++bar": replica 2 is empty; name a node or remove the extra '+'"#
    );
    assert!(entry("a-m=+foo").unwrap_err().contains("replica 1 is empty"));
    assert!(entry("a-m=foo+").unwrap_err().contains("replica 2 is empty"));
    assert!(
        entry("a-m=foo+Bar")
            .unwrap_err()
            .contains(r#""a-m=foo+Bar": node name "Bar""#)
    );
    // One empty name is a bad name, as it always was.
    assert_eq!(
        entry("a-m=").unwrap_err(),
        r#"routing entry "a-m=": a node name cannot be empty"#
    );
    // The checks hold for entries made in code too.
    assert!(matches!(
        Entry::new(b'a', b'm', vec![]),
        Err(TableError::NoReplica { .. })
    ));
}

#[test]
fn a_table_with_a_replicated_entry_is_a_table() {
    let t = RoutingTable::parse(["a-m=foo,n-z=bar+baz"], 1, "t").unwrap();
    assert_eq!(t.entries().len(), 2);
    assert!(t.entries()[1].is_replicated() && !t.entries()[0].is_replicated());
    let entries = vec![entry("a-z=foo+bar").unwrap()];
    assert!(RoutingTable::new(entries, 1, "t").is_ok());
    use kvnode_gossip::Table;
    assert_eq!(replicated(&["a-z=foo+bar"]).check(), Ok(()));
}

#[test]
fn a_replicated_table_answers_replicas_and_owner_by_bucket() {
    let t = replicated(&["a-m=foo+bar+baz", "n-z=qux"]);
    assert_eq!(
        t.replicas_of(b"hello"),
        Some([name("foo"), name("bar"), name("baz")].as_slice())
    );
    assert_eq!(t.owner_of(b"hello"), Some(&name("foo")));
    assert_eq!(t.replicas_of(b"world"), Some([name("qux")].as_slice()));
    assert_eq!(t.owner_of(b"world"), Some(&name("qux")));
    assert_eq!(t.replicas_of(b"\x00"), None);
    assert_eq!(t.entry_of(b"hello").unwrap().to_string(), "a-m=foo+bar+baz");
    assert_eq!(t.nodes(), [&name("bar"), &name("baz"), &name("foo"), &name("qux")]);
    assert_eq!(t.to_string(), "[a-m=foo+bar+baz, n-z=qux]");
}

#[test]
fn a_single_node_table_keeps_its_order_among_tables() {
    // Entries compare as before: one node each, ordered by range then name.
    let a = table("a-m=bar");
    let b = table("a-m=foo");
    assert!(b.supersedes(&a) && !a.supersedes(&b));
    // A replica list orders after its own first node alone.
    let solo = replicated(&["a-m=foo"]);
    let three = replicated(&["a-m=foo+bar"]);
    assert!(three.supersedes(&solo) && !solo.supersedes(&three));
}

#[test]
fn decoded_entries_are_checked_like_parsed_ones() {
    let t = replicated(&["a-m=foo+bar", "n-z=baz"]);
    let bytes = postcard::to_allocvec(&t).unwrap();
    assert_eq!(postcard::from_bytes::<RoutingTable>(&bytes).unwrap(), t);
    // `foo+bar` encoded, then the second name made `foo` too: refused as it is decoded.
    let mut twice = bytes.clone();
    let pos = twice.windows(3).position(|w| w == b"bar").unwrap();
    twice[pos..pos + 3].copy_from_slice(b"foo");
    let err = postcard::from_bytes::<RoutingTable>(&twice).unwrap_err();
    assert!(matches!(err, postcard::Error::SerdeDeCustom), "{err:?}");
    // No replica at all: the count byte of the first entry's list set to 0.
    let one = postcard::to_allocvec(&table("a-z=foo")).unwrap();
    let mut none = one.clone();
    // entries: [len=1][first][last][replicas len=1]...
    assert_eq!(none[3], 1);
    none[3] = 0;
    assert!(postcard::from_bytes::<RoutingTable>(&none).is_err());
}

mod round_trip {
    use proptest::prelude::*;

    use super::*;

    fn node() -> impl Strategy<Value = NodeName> {
        "[a-z0-9_-]{1,12}".prop_map(|n| NodeName::new(n).unwrap())
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            any::<u8>(),
            any::<u8>(),
            proptest::collection::btree_set(node(), 1..=MAX_REPLICAS),
        )
            .prop_map(|(a, b, nodes)| Entry::new(a.min(b), a.max(b), nodes.into_iter().collect()).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn an_entry_shown_parses_back_to_itself(e in entry()) {
            let shown = e.to_string();
            prop_assert_eq!(shown.parse::<Entry>().unwrap(), e, "{}", shown);
        }

        #[test]
        fn a_single_node_table_shown_parses_back_to_itself(
            cuts in proptest::collection::btree_set(any::<u8>(), 0..6),
            nodes in proptest::collection::vec(node(), 7),
        ) {
            // Ranges between the cuts, covering every byte, each with one node.
            let mut entries = Vec::new();
            let mut first = 0u8;
            for (i, &cut) in cuts.iter().chain([&255u8]).enumerate() {
                if cut < first {
                    continue;
                }
                entries.push(Entry::single(first, cut, nodes[i].clone()));
                if cut == 255 {
                    break;
                }
                first = cut + 1;
            }
            let t = RoutingTable::new(entries, 1, "test").unwrap();
            let shown = t.to_string();
            let inner = shown.trim_start_matches('[').trim_end_matches(']').replace(", ", ",");
            prop_assert_eq!(RoutingTable::parse([inner.as_str()], 1, "test").unwrap(), t, "{}", shown);
        }
    }
}

#[test]
fn a_group_keeps_its_generation_while_it_lives_and_one_born_again_gets_a_new_one() {
    use kvnode_replica::Generation;
    let parse = |spec: &str, version, setter: &str| RoutingTable::parse([spec], version, setter).unwrap();
    // A configuration file's groups are of the legacy history on every node (each node sets
    // its copy itself), as the groups of a cluster from before generations are.
    let held = parse("a-m=foo+bar+baz,n-z=qux", 3, "foo").with_generations(None);
    assert_eq!(held.generation_of(b'a', b'm'), Generation::LEGACY);
    assert_eq!(
        held,
        parse("a-m=foo+bar+baz,n-z=qux", 3, "foo"),
        "the same as a table without generations"
    );
    // On the move, re-ordered, moved: the same group, the same history. A single owner's
    // range starting to move is a group born.
    let moves = vec!["a-m=bar+baz+quux".parse().unwrap(), "n-z=qux+foo".parse().unwrap()];
    let moving = parse("a-m=baz+foo+bar,n-z=qux", 4, "foo")
        .with_moves(moves)
        .unwrap()
        .with_generations(Some(&held));
    assert_eq!(moving.generation_of(b'a', b'm'), Generation::LEGACY);
    let born = moving.generation_of(b'n', b'z');
    assert_ne!(born, Generation::LEGACY);
    let moved = parse("a-m=bar+baz+quux,n-z=qux+foo", 5, "foo").with_generations(Some(&moving));
    assert_eq!(
        (moved.generation_of(b'a', b'm'), moved.generation_of(b'n', b'z')),
        (Generation::LEGACY, born)
    );
    assert!(!moved.has_ended(b'a', b'm', Generation::LEGACY));
    // Finished onto one node: that history ended. Replicated again: another one.
    let single = parse("a-m=bar,n-z=qux+foo", 6, "foo").with_generations(Some(&moved));
    assert!(single.has_ended(b'a', b'm', Generation::LEGACY));
    let again = parse("a-m=bar+baz+quux,n-z=qux+foo", 7, "foo").with_generations(Some(&single));
    let reborn = again.generation_of(b'a', b'm');
    assert!(![Generation::LEGACY, born].contains(&reborn), "{reborn}");
    assert!(again.has_ended(b'a', b'm', Generation::LEGACY), "still listed");
    assert!(!again.has_ended(b'a', b'm', reborn) && !again.has_ended(b'n', b'z', born));
    // The same birth by another coordinator (a partition's other side) is another history.
    let elsewhere = parse("a-m=bar+baz+quux,n-z=qux+foo", 7, "bar").with_generations(Some(&single));
    assert_ne!(elsewhere.generation_of(b'a', b'm'), reborn);
    // Tables differing only in generations are still ordered, so every node keeps one.
    let configured = parse("a-m=bar+baz+quux,n-z=qux+foo", 7, "foo").with_generations(None);
    assert!(configured.supersedes(&again) != again.supersedes(&configured));
    // Only the newest few ended histories of a range are kept.
    let mut t = again;
    let mut ended = vec![Generation::LEGACY, reborn];
    for version in 8..50 {
        let spec = if version % 2 == 0 {
            "a-m=bar,n-z=qux+foo"
        } else {
            "a-m=bar+baz,n-z=qux+foo"
        };
        let next = parse(spec, version, "foo").with_generations(Some(&t));
        if version % 2 == 1 {
            ended.push(next.generation_of(b'a', b'm'));
        }
        t = next;
    }
    let listed: Vec<_> = ended.iter().filter(|g| t.has_ended(b'a', b'm', **g)).collect();
    assert_eq!(
        listed,
        ended[ended.len() - 1 - ENDED_KEPT..ended.len() - 1]
            .iter()
            .collect::<Vec<_>>()
    );
}

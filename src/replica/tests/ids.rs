use crate::ids::{IdError, NodeIds, node_id, siphash24};

#[test]
fn siphash_matches_the_reference_vector() {
    // The paper's test key 00..0f and the empty message (vectors.h, first entry).
    let key = (
        u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]),
        u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]),
    );
    assert_eq!(siphash24(key, b""), 0x726f_db47_dd0e_0e31);
    let fifteen: Vec<u8> = (0..15).collect();
    assert_eq!(siphash24(key, &fifteen), 0xa129_ca61_49be_45e5);
}

#[test]
fn node_ids_are_stable_and_never_zero() {
    assert_eq!(node_id("foo"), node_id("foo"));
    assert_ne!(node_id("foo"), node_id("bar"));
    assert_ne!(node_id(""), 0);
}

#[test]
fn names_map_both_ways() {
    let ids = NodeIds::new(["foo", "bar", "baz"]).expect("distinct");
    let foo = ids.id_of("foo").expect("known");
    assert_eq!(ids.name_of(foo), Some("foo"));
    assert_eq!(ids.id_of("qux"), None);
    assert_eq!(ids.ids().count(), 3);
}

#[test]
fn a_name_twice_is_refused() {
    assert_eq!(
        NodeIds::new(["foo", "bar", "foo"]),
        Err(IdError::Duplicate("foo".into()))
    );
}

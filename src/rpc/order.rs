//! The order of a stream's reads and writes: which requests must wait for which.

use crate::wire::{BucketOp, Request};

/// Whether a request reads or writes a bucket's keys; other requests have no class.
///
/// A stream's requests take effect in the order they came, reads among writes included. A
/// durable write waits for the store's group commit while a read does not (SPEC §7), so a read
/// taken in right behind a write could be served before that write is committed, and a write
/// right behind a read could be committed before the read is served. So a read is taken in
/// only once the stream's earlier writes are answered, and a write once its earlier reads are;
/// pipelines of writes alone, or of reads alone, are not held up. (The front session of the
/// local listeners keeps the same rule.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
}

impl Class {
    /// The class of `request`, if it has one.
    pub fn of(request: &Request) -> Option<Class> {
        match request {
            Request::Bucket(b) => Class::of_op(&b.op),
            _ => None,
        }
    }

    /// The class of a bucket operation, if it has one.
    pub fn of_op(op: &BucketOp) -> Option<Class> {
        match op {
            BucketOp::Put { .. }
            | BucketOp::PutExisting { .. }
            | BucketOp::PutReporting { .. }
            | BucketOp::Delete { .. }
            | BucketOp::Create => Some(Class::Write),
            BucketOp::Get { .. } | BucketOp::Keys { .. } => Some(Class::Read),
            // A watch's long poll changes nothing and orders nothing: a write behind it
            // must not wait for it.
            BucketOp::Route | BucketOp::Watch { .. } => None,
        }
    }
}

/// How many of a stream's reads and writes are in flight.
#[derive(Default)]
pub(super) struct Classes {
    reads: usize,
    writes: usize,
}

impl Classes {
    /// Whether a request of `class` must wait for requests of the other class to be answered.
    pub(super) fn must_wait(&self, class: Option<Class>) -> bool {
        match class {
            Some(Class::Read) => self.writes > 0,
            Some(Class::Write) => self.reads > 0,
            None => false,
        }
    }

    /// Counts a request of `class` taken in.
    pub(super) fn started(&mut self, class: Option<Class>) {
        match class {
            Some(Class::Read) => self.reads += 1,
            Some(Class::Write) => self.writes += 1,
            None => {}
        }
    }

    /// Counts a request of `class` answered.
    pub(super) fn ended(&mut self, class: Option<Class>) {
        match class {
            Some(Class::Read) => self.reads -= 1,
            Some(Class::Write) => self.writes -= 1,
            None => {}
        }
    }
}

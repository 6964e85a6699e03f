mod change;
mod faults;
mod generation;
mod ids;
mod install;
mod lease;
mod moves;
mod removed;
mod scenarios;
mod sim;
mod wire;

/// The generation the tests give their groups.
pub(crate) const GEN: crate::ids::Generation = crate::ids::Generation(7);

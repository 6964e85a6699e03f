mod change;
mod faults;
mod ids;
mod install;
mod moves;
mod scenarios;
mod sim;
mod wire;

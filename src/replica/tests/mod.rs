mod change;
mod faults;
mod ids;
mod moves;
mod scenarios;
mod sim;
mod wire;

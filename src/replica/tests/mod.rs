mod faults;
mod ids;
mod scenarios;
mod sim;
mod wire;

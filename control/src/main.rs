//! `ward-control`: parses flags and runs the control component.
#![forbid(unsafe_code)]

fn main() {}

//! Analysis benchmark: a generated repository of 5,000 targets (work in progress).

fn main() {}

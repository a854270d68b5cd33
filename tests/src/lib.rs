//! Whole-system tests live in `tests/tests/`: they check what ships at the top level (the
//! experiment files in `configs/`) and, as the system grows, drive the built binaries as processes
//! on loopback.

//! End-to-end tests across the Tether crates live in `tests/tests/`; this library is empty.

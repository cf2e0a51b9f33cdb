//! Placeholder: the real-browser tests (being written).

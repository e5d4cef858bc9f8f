//! The UDP flow manager: a sans-io core (see `LIFECYCLE.md`).

//! `ConfigState`: the state that orders build, its diff and its state file.

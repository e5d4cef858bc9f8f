//! The framed channel (8-byte little-endian length counting itself, then a protobuf message).

//! TOML configuration (Sōzu 2.x compatible) → validated `Config` → orders.

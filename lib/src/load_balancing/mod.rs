//! Backend selection policies shared by UDP, TCP and HTTP.

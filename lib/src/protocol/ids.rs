//! Cluster and backend identifiers.
//!
//! Cheap to clone (`Arc<str>`: a clone is a reference-count increment, never
//! an allocation) so a flow can hold its cluster and backend by id. Maps keyed
//! by these ids can be queried with a plain `&str`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name(Arc::from(value))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name(Arc::from(value))
            }
        }

        impl From<Arc<str>> for $name {
            fn from(value: Arc<str>) -> Self {
                $name(value)
            }
        }
    };
}

string_id!(
    /// The id of a cluster (`[clusters.<id>]`).
    ClusterId
);
string_id!(
    /// The id of a backend inside its cluster (`backend_id`).
    BackendId
);

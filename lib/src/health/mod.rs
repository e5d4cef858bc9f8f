//! Backend health: probe scheduling and rise/fall state.

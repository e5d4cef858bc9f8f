//! File-descriptor passing (SCM_RIGHTS) with a manifest naming each socket.

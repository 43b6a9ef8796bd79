//! Integration tests: drive the real `larder` binary and real clients.

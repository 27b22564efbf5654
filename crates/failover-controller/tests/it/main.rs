//! The controller's integration tests, one binary: each module was a binary of its own,
//! and every one of them linked the controller and openraft again.

mod archive_size;
mod damaged_data_dir;
mod history_archive;
mod large_state;
mod snapshot_transport;
mod storage_suite;

//! STUB labels

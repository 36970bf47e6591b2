//! LMFlow-rs facade

//! aiop's behaviour tests, in one binary (ripgrep style): each module covers one area.
//! Data files they read live in tests/data/ (see tests/data/make_flops_expected.py).

mod cg;
mod cli;
mod common;
mod daemon;
mod predictor;
mod props;
mod search;

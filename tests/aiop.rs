//! aiop's behaviour tests, in one binary: each module covers one area.

mod daemon;

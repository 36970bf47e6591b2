//! lmflow-align

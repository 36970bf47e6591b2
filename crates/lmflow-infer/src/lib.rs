//! lmflow-infer

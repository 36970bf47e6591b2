//! lmflow-train

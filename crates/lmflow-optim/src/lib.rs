//! lmflow-optim

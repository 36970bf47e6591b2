//! lmflow-datasets

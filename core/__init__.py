"""Ground floor: config schema, run directory and atomic IO, label space, metrics, logging."""

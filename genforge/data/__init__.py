"""Data layer: sources -> cleaned, de-duplicated, split, gated, versioned datasets."""

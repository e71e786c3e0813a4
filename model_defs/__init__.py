"""Model definitions, one file per architecture family, built from shared layers."""

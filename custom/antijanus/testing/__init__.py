"""Testing helpers: tiny random-weight model folders in the real diffusers/transformers layouts."""

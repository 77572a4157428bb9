"""Layer 4: generate with fixed per-sample seeds, score, and record ``results.json`` rows."""

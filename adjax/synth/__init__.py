"""On-device synthetic anomalies, vmapped inside the compiled training step.

- `patches`: EfficientAD + CDO's noise patches.
- `draem`: DRAEM's simulated anomalies (with seed 000's focused variant and seed 002's cutout),
  built on `perlin` (Perlin-noise masks), `augmenters` (the ten imgaug-style texture
  augmenters, in JAX) and `textures` (a DTD folder, or procedural textures).
"""

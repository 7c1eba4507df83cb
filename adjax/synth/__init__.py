"""On-device synthetic anomalies, vmapped inside the compiled training step."""

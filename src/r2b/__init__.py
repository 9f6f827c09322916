"""r2b: binary neural networks with Real-to-Binary convolutions."""

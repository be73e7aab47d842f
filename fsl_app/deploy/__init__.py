"""Deploying what was learned: the model bundle, its ONNX graph, batch prediction (local, Ray)."""

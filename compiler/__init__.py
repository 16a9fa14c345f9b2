"""lpuc's compiler: the ONNX frontend, the passes and schedulers, and the `lpuc` CLI."""

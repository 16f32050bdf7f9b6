"""CPU (llvm) kernels and schedule rules: matmuls and norms, vectorised activations, KV-cache attention."""

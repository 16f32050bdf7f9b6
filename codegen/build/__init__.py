"""Build a model library: export the generated nn.Module, run the compile pipeline, write model.so."""

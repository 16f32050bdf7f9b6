"""Declarative YAML -> Apache TVM Relax code generator for decoder-only transformers."""

"""Packages generated from specs/ by `codegen generate`. DO NOT EDIT."""

"""What build, convert and runtime agree on: the artifact folder's files and the tensor-cache format."""

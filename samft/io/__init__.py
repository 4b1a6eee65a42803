"""Writing outputs safely: folders checked before long work, files replaced atomically."""
